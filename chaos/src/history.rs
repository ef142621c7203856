//! The run's history: every operation, one JSON object per line, with monotonic time (`t`, ns since the
//! run started) and wall time (`wall_ms`, ms since the Unix epoch). Jepsen's model: a publish is an
//! `invoke` followed by `ok` (202: acknowledged), `fail` (definitely not written) or `info`
//! (indeterminate: timeout, 5xx, connection error); each process (producer) runs one operation at a time,
//! so an invoke is completed by the same process's next completion.

use std::io::{BufRead, BufWriter, Write};
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::ChaosError;
use crate::faults::Fault;

/// One event as stored: its offset and identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedEvent {
    pub offset: u64,
    pub source: String,
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// The arrival stamp the partition's leader gave it (0 in histories written before it was recorded).
    #[serde(default)]
    pub arrival_ms: u64,
}

/// A Trigger of the run: its subscriber path, its filter (exact `type`, or all) and its dead-letter stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerSpec {
    pub name: String,
    pub type_filter: Option<String>,
    pub dead_letter_stream: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Op {
    /// The run's parameters (first line).
    Start {
        seed: u64,
        nodes: usize,
        partitions: u32,
        faults: Vec<String>,
        network: String,
        stream: String,
        dedupe: bool,
        /// The Broker's dedupe window when the run set one (`--dedupe-window`); None: the default (2 minutes),
        /// longer than any retry of the run.
        #[serde(default)]
        dedupe_window_ms: Option<u64>,
        triggers: Vec<TriggerSpec>,
        planted_bug: Option<String>,
    },
    Phase {
        name: String,
    },
    Invoke {
        process: usize,
        source: String,
        id: String,
        node: u64,
    },
    Ok {
        process: usize,
        source: String,
        id: String,
        node: u64,
    },
    Fail {
        process: usize,
        source: String,
        id: String,
        node: u64,
        status: u16,
        error: String,
    },
    Info {
        process: usize,
        source: String,
        id: String,
        node: u64,
        error: String,
    },
    FaultStart {
        fault: Fault,
    },
    FaultEnd {
        fault: Fault,
    },
    /// A node process started (`incarnation` counts its starts).
    NodeStart {
        node: u64,
        incarnation: u32,
    },
    /// A delivery attempt as a subscriber saw it and what it answered.
    Deliver {
        trigger: String,
        source: String,
        id: String,
        attempt: u32,
        status: u16,
    },
    /// A consumer's committed offsets as one node reported them (Consumers Status).
    Offsets {
        node: u64,
        incarnation: u32,
        trigger: String,
        committed: Vec<(u32, u64)>,
        #[serde(default)]
        is_final: bool,
    },
    /// One node's whole copy of a stream's partition, read from that node (after healing).
    Read {
        node: u64,
        stream: String,
        partition: u32,
        events: Vec<LoggedEvent>,
    },
    /// A node process that exited without a fault stopping it (a panic, an error at start): found before each
    /// fault, at each revert and heal, and at the end of the run.
    Crashed {
        node: u64,
        incarnation: u32,
        exit: String,
    },
    /// A node that was not ready (or could not be read) after healing: no final read of it.
    Unrecovered {
        node: u64,
        reason: String,
    },
    /// Something the harness noticed (not an operation).
    Note {
        text: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub t: u64,
    pub wall_ms: u64,
    #[serde(flatten)]
    pub op: Op,
}

/// Records entries in memory and appends them to a JSONL file.
pub struct History {
    start: Instant,
    inner: Mutex<Inner>,
}

struct Inner {
    entries: Vec<Entry>,
    out: Option<BufWriter<std::fs::File>>,
    write_error: Option<String>,
}

pub use sluice_cloudevent::clock::now_ms as wall_ms;

impl History {
    pub fn new(path: Option<&Path>) -> Result<Self, ChaosError> {
        let out = match path {
            Some(path) => Some(BufWriter::new(
                std::fs::File::create(path).map_err(|e| ChaosError::io(format!("creating {}", path.display()), e))?,
            )),
            None => None,
        };
        Ok(Self { start: Instant::now(), inner: Mutex::new(Inner { entries: Vec::new(), out, write_error: None }) })
    }

    /// Nanoseconds since the run started.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn record(&self, op: Op) {
        let entry = Entry { t: self.now(), wall_ms: wall_ms(), op };
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(out) = inner.out.as_mut() {
            let line = serde_json::to_string(&entry).map_err(|e| e.to_string());
            let written = line.and_then(|line| writeln!(out, "{line}").map_err(|e| e.to_string()));
            if let Err(e) = written {
                inner.write_error.get_or_insert(e);
            }
        }
        inner.entries.push(entry);
    }

    pub fn note(&self, text: impl Into<String>) {
        self.record(Op::Note { text: text.into() });
    }

    /// Flushes the file; answers every entry so far.
    pub fn finish(&self) -> Result<Vec<Entry>, ChaosError> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(out) = inner.out.as_mut()
            && let Err(e) = out.flush()
        {
            inner.write_error.get_or_insert(e.to_string());
        }
        if let Some(e) = inner.write_error.take() {
            return Err(ChaosError::History(format!("writing the history: {e}")));
        }
        Ok(inner.entries.clone())
    }

    /// A copy of the entries so far (for checks while the run goes on).
    pub fn snapshot(&self) -> Vec<Entry> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).entries.clone()
    }
}

/// Reads a history file back.
pub fn load(path: &Path) -> Result<Vec<Entry>, ChaosError> {
    let file = std::fs::File::open(path).map_err(|e| ChaosError::io(format!("opening {}", path.display()), e))?;
    let mut entries = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| ChaosError::io(format!("reading {}", path.display()), e))?;
        if line.trim().is_empty() {
            continue;
        }
        let entry = serde_json::from_str(&line)
            .map_err(|e| ChaosError::History(format!("{} line {}: {e}", path.display(), n + 1)))?;
        entries.push(entry);
    }
    Ok(entries)
}
