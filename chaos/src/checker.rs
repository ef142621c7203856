//! The checker: a pure function of the history (which holds the run's parameters, every operation and the
//! final reads of every node) to a [`Report`]. Definitions (also in `docs/reliability.md`):
//!
//! - **acknowledged**: events (source, id) with at least one `ok` (202).
//! - **lost**: acknowledged, and in no node's final read of the broker's stream. Must be 0.
//! - **unexpected**: in a node's final read, never invoked. Must be 0.
//! - **divergence**: a (stream, partition) whose copies differ between nodes after healing (content or
//!   length). Must be 0. **offset conflicts**: offsets holding two different events on two nodes. Must be 0.
//!   **gaps**: a node's copy whose offsets are not dense. Must be 0.
//! - **duplicates in the log**: events stored at more than one offset. 0 when the broker dedupes.
//! - **dispatch-complete**: every stored event that matches a Trigger was delivered to its subscriber with a
//!   2xx, or is in the Trigger's dead-letter stream. Incomplete must be 0. Duplicate deliveries (2xx answers
//!   beyond the first per event) are reported as a rate (at-least-once).
//! - **committed offsets never go back**: per (node, incarnation, Trigger, partition) as observed in order,
//!   and the final committed offsets are at least every offset observed during the run.
//! - **committed offsets apart**: a (Trigger, partition) whose final committed offset differs between nodes
//!   after the drain (the offsets are replicated state: every node applies the same commits). Must be 0.
//! - **refused but stored**: an event whose every attempt was definitely refused (a 4xx), found in the log.
//!   Must be 0.
//! - **out of order**: two events one producer had acknowledged one after the other, in the same partition at
//!   offsets the other way round (the second was sent only after the first was acknowledged). Must be 0.
//! - **phantom deliveries**: a delivery of an event in no node's final read (dispatched before it was
//!   committed, or from a log that lost it). **misrouted deliveries**: a delivery to a Trigger whose filter the
//!   event does not match. Both must be 0.
//! - **unavailability after a leader kill**: from the kill to the first acknowledgement of a publish invoked
//!   after it that landed in the killed leader's partition.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use crate::faults::Fault;
use crate::history::{Entry, LoggedEvent, Op, TriggerSpec};

/// (source, id) of an event.
pub type Key = (String, String);

#[derive(Clone, Debug, Default, PartialEq)]
pub struct TriggerFigures {
    /// Stored events that match the Trigger.
    pub matching: usize,
    /// Matching events delivered with a 2xx at least once.
    pub delivered: usize,
    /// Matching events in the dead-letter stream (and not delivered).
    pub dead_lettered: usize,
    /// Matching events neither delivered nor dead-lettered.
    pub incomplete: Vec<Key>,
    pub attempts: usize,
    pub failed_attempts: usize,
    /// 2xx deliveries beyond the first of each event.
    pub duplicate_deliveries: usize,
}

impl TriggerFigures {
    pub fn duplicate_rate(&self) -> f64 {
        if self.delivered == 0 { 0.0 } else { self.duplicate_deliveries as f64 / self.delivered as f64 }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Unavailability {
    pub at_ns: u64,
    pub node: u64,
    pub group: u32,
    /// None: no publish to that partition was acknowledged after the kill.
    pub window_ns: Option<u64>,
}

/// Nearest-rank percentiles of the unavailability windows after leader kills; a kill with no ack after it
/// counts as longer than every other (`None`).
#[derive(Clone, Debug, PartialEq)]
pub struct UnavailabilitySummary {
    pub kills: usize,
    pub p50_ns: Option<u64>,
    pub p99_ns: Option<u64>,
}

impl UnavailabilitySummary {
    pub fn of(windows: &[Unavailability]) -> Option<Self> {
        if windows.is_empty() {
            return None;
        }
        // None sorts first as an Option; map it to the top instead.
        let mut sorted: Vec<u64> = windows.iter().map(|u| u.window_ns.unwrap_or(u64::MAX)).collect();
        sorted.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            Some(sorted[rank - 1]).filter(|w| *w != u64::MAX)
        };
        Some(Self { kills: sorted.len(), p50_ns: at(0.50), p99_ns: at(0.99) })
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub seed: u64,
    pub planted_bug: Option<String>,
    pub duration_ns: u64,
    pub faults: BTreeMap<String, usize>,
    /// Publish attempts (invokes).
    pub attempts: usize,
    pub acknowledged: usize,
    /// Sent, never acknowledged, never definitely refused.
    pub indeterminate: usize,
    /// Of those, found in the log (an indeterminate write that took effect).
    pub indeterminate_stored: usize,
    /// Definitely refused (4xx), never acknowledged.
    pub failed: usize,
    /// Events in the broker's stream (the most complete copy of each partition).
    pub stored: usize,
    pub lost: Vec<Key>,
    pub unexpected: Vec<Key>,
    pub divergent: Vec<String>,
    pub offset_conflicts: usize,
    pub gaps: Vec<String>,
    pub dedupe: bool,
    /// The Broker's dedupe window when the run set one: copies of an event further apart than it are no
    /// violation (the event came again as a new one).
    pub dedupe_window_ms: Option<u64>,
    /// Events stored more than once within the dedupe window (any two copies, without a window set).
    pub log_duplicates: Vec<Key>,
    /// Events stored again further apart than the run's dedupe window: a retry past it, allowed.
    pub stored_again_past_window: usize,
    pub triggers: BTreeMap<String, TriggerFigures>,
    pub offset_observations: usize,
    pub offset_regressions: Vec<String>,
    /// (Trigger, partition)s whose final committed offsets differ between nodes.
    pub offsets_apart: Vec<String>,
    pub unavailability: Vec<Unavailability>,
    /// Nodes that did not recover after healing (not ready, or unreadable): the cluster did not heal.
    pub unrecovered: Vec<String>,
    /// Node processes that exited without a fault stopping them (a panic, an error at start).
    pub crashed: Vec<String>,
    /// Events whose every attempt was definitely refused (4xx), found in the log.
    pub refused_stored: Vec<Key>,
    /// A producer's acknowledged events stored the other way round in one partition.
    pub out_of_order: Vec<String>,
    /// Deliveries of events in no final read, by Trigger.
    pub phantom_deliveries: Vec<String>,
    /// Deliveries to a Trigger whose filter the event does not match.
    pub misrouted_deliveries: Vec<String>,
    /// Problems with the history itself (no final read, no start line).
    pub incomplete_history: Vec<String>,
}

impl Report {
    pub fn dispatch_incomplete(&self) -> usize {
        self.triggers.values().map(|t| t.incomplete.len()).sum()
    }

    pub fn duplicate_deliveries(&self) -> usize {
        self.triggers.values().map(|t| t.duplicate_deliveries).sum()
    }

    /// Every safety violation, one line each; empty when the run is clean.
    pub fn violations(&self) -> Vec<String> {
        let mut out = Vec::new();
        let sample = |keys: &[Key]| keys.iter().take(5).map(|(s, i)| format!("{s}/{i}")).collect::<Vec<_>>().join(", ");
        if !self.lost.is_empty() {
            out.push(format!("{} acknowledged events lost (e.g. {})", self.lost.len(), sample(&self.lost)));
        }
        if !self.unexpected.is_empty() {
            out.push(format!("{} unexpected events (e.g. {})", self.unexpected.len(), sample(&self.unexpected)));
        }
        out.extend(self.divergent.iter().map(|d| format!("divergence: {d}")));
        if self.offset_conflicts > 0 {
            out.push(format!("{} offsets hold different events on different nodes", self.offset_conflicts));
        }
        out.extend(self.gaps.iter().map(|g| format!("gap: {g}")));
        if self.dedupe && !self.log_duplicates.is_empty() {
            out.push(format!(
                "{} events stored twice although the broker dedupes (e.g. {})",
                self.log_duplicates.len(),
                sample(&self.log_duplicates)
            ));
        }
        for (name, figures) in &self.triggers {
            if !figures.incomplete.is_empty() {
                out.push(format!(
                    "trigger {name}: {} matching events neither delivered nor dead-lettered (e.g. {})",
                    figures.incomplete.len(),
                    sample(&figures.incomplete)
                ));
            }
        }
        out.extend(self.offset_regressions.iter().map(|r| format!("committed offset went back: {r}")));
        out.extend(self.offsets_apart.iter().map(|a| format!("committed offsets differ between nodes: {a}")));
        out.extend(self.unrecovered.iter().map(|u| format!("not recovered after healing: {u}")));
        out.extend(self.crashed.iter().map(|c| format!("crashed: {c}")));
        if !self.refused_stored.is_empty() {
            out.push(format!(
                "{} events refused (4xx) at every attempt yet stored (e.g. {})",
                self.refused_stored.len(),
                sample(&self.refused_stored)
            ));
        }
        out.extend(self.out_of_order.iter().map(|o| format!("out of order: {o}")));
        out.extend(self.phantom_deliveries.iter().map(|d| format!("phantom delivery: {d}")));
        out.extend(self.misrouted_deliveries.iter().map(|d| format!("misrouted delivery: {d}")));
        out.extend(self.incomplete_history.iter().map(|h| format!("history: {h}")));
        out
    }
}

fn ms(ns: u64) -> String {
    format!("{:.0} ms", ns as f64 / 1e6)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let faults: Vec<String> = self.faults.iter().map(|(k, n)| format!("{k}×{n}")).collect();
        let rows: Vec<(&str, String)> = vec![
            ("seed", self.seed.to_string()),
            ("planted bug", self.planted_bug.clone().unwrap_or_else(|| "none".into())),
            ("duration", format!("{:.1} s", self.duration_ns as f64 / 1e9)),
            ("faults", if faults.is_empty() { "none".into() } else { faults.join(" ") }),
            ("publish attempts", self.attempts.to_string()),
            ("acknowledged", self.acknowledged.to_string()),
            ("indeterminate (stored)", format!("{} ({})", self.indeterminate, self.indeterminate_stored)),
            ("refused (4xx)", self.failed.to_string()),
            ("stored", self.stored.to_string()),
            ("LOST", self.lost.len().to_string()),
            ("UNEXPECTED", self.unexpected.len().to_string()),
            ("DIVERGENT partitions", self.divergent.len().to_string()),
            ("OFFSET CONFLICTS", self.offset_conflicts.to_string()),
            ("GAPS", self.gaps.len().to_string()),
            (
                if self.dedupe { "DUPLICATES in log" } else { "duplicates in log (no dedupe)" },
                match self.dedupe_window_ms {
                    Some(window_ms) => format!(
                        "{} (within the {window_ms} ms window; {} stored again past it)",
                        self.log_duplicates.len(),
                        self.stored_again_past_window
                    ),
                    None => self.log_duplicates.len().to_string(),
                },
            ),
            ("DISPATCH INCOMPLETE", self.dispatch_incomplete().to_string()),
            ("NOT RECOVERED nodes", self.unrecovered.len().to_string()),
            ("CRASHED node processes", self.crashed.len().to_string()),
            ("REFUSED yet stored", self.refused_stored.len().to_string()),
            ("OUT OF ORDER (per producer)", self.out_of_order.len().to_string()),
            (
                "PHANTOM / MISROUTED deliveries",
                format!("{} / {}", self.phantom_deliveries.len(), self.misrouted_deliveries.len()),
            ),
            (
                "COMMITTED OFFSET regressions",
                format!("{} (of {} observations)", self.offset_regressions.len(), self.offset_observations),
            ),
            ("COMMITTED OFFSETS apart (nodes)", self.offsets_apart.len().to_string()),
        ];
        writeln!(f, "{:-<64}", "")?;
        for (name, value) in rows {
            writeln!(f, "{name:<34} {value}")?;
        }
        for (name, t) in &self.triggers {
            writeln!(
                f,
                "{:<34} matching {}, delivered {}, dead-lettered {}, incomplete {}, attempts {} ({} failed), \
                 duplicate deliveries {} ({:.2}%)",
                format!("trigger {name}"),
                t.matching,
                t.delivered,
                t.dead_lettered,
                t.incomplete.len(),
                t.attempts,
                t.failed_attempts,
                t.duplicate_deliveries,
                t.duplicate_rate() * 100.0
            )?;
        }
        if self.unavailability.is_empty() {
            writeln!(f, "{:<34} no leader kills", "unavailability after leader kills")?;
        }
        for u in &self.unavailability {
            let window = u.window_ns.map(ms).unwrap_or_else(|| "no ack after the kill".into());
            writeln!(
                f,
                "{:<34} at {:.1} s: node {} (group {}): {window}",
                "unavailability after leader kill",
                u.at_ns as f64 / 1e9,
                u.node,
                u.group
            )?;
        }
        if let Some(max) = self.unavailability.iter().filter_map(|u| u.window_ns).max() {
            writeln!(f, "{:<34} {}", "longest unavailability", ms(max))?;
        }
        if let Some(summary) = UnavailabilitySummary::of(&self.unavailability) {
            let shown = |w: Option<u64>| w.map(ms).unwrap_or_else(|| "no ack".into());
            writeln!(
                f,
                "{:<34} p50 {} / p99 {} over {} leader kills",
                "unavailability percentiles",
                shown(summary.p50_ns),
                shown(summary.p99_ns),
                summary.kills
            )?;
        }
        let violations = self.violations();
        writeln!(f, "{:-<64}", "")?;
        if violations.is_empty() {
            writeln!(f, "OK: no safety violation")?;
        } else {
            for v in violations {
                writeln!(f, "VIOLATION: {v}")?;
            }
        }
        Ok(())
    }
}

fn is_2xx(status: u16) -> bool {
    (200..300).contains(&status)
}

fn key(e: &LoggedEvent) -> Key {
    (e.source.clone(), e.id.clone())
}

/// Checks a history (see the module docs for the definitions).
pub fn check(history: &[Entry]) -> Report {
    let mut report = Report::default();
    let mut stream = None;
    let mut triggers: Vec<TriggerSpec> = Vec::new();
    let mut invoked: BTreeSet<Key> = BTreeSet::new();
    let mut acked: BTreeSet<Key> = BTreeSet::new();
    let mut refused: BTreeSet<Key> = BTreeSet::new();
    // Events with an attempt whose outcome is unknown (it may have been written).
    let mut uncertain: BTreeSet<Key> = BTreeSet::new();
    // Each producer's acknowledged events, in the order of their acknowledgements.
    let mut acked_by_process: BTreeMap<usize, Vec<Key>> = BTreeMap::new();
    // Trigger → every event a delivery of it carried (whatever the answer).
    let mut delivered_any: BTreeMap<String, BTreeSet<Key>> = BTreeMap::new();
    // (stream, partition) → node → events
    let mut reads: BTreeMap<(String, u32), BTreeMap<u64, Vec<LoggedEvent>>> = BTreeMap::new();
    let mut last_invoke: HashMap<usize, u64> = HashMap::new();
    // (invoke time, ack time, key) of every acknowledged attempt
    let mut acks: Vec<(u64, u64, Key)> = Vec::new();
    let mut kills: Vec<(u64, u64, u32)> = Vec::new();
    // trigger → key → (2xx count)
    let mut ok_deliveries: BTreeMap<String, HashMap<Key, usize>> = BTreeMap::new();
    let mut attempts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    // (node, incarnation, trigger, partition) → last offset
    let mut observed: BTreeMap<(u64, u32, String, u32), u64> = BTreeMap::new();
    let mut observed_max: BTreeMap<(String, u32), u64> = BTreeMap::new();
    // (trigger, partition) → node → its final committed offset
    let mut finals: BTreeMap<(String, u32), BTreeMap<u64, u64>> = BTreeMap::new();
    let mut first_t = None;
    let mut last_t = 0;

    for entry in history {
        first_t.get_or_insert(entry.t);
        last_t = last_t.max(entry.t);
        match &entry.op {
            Op::Start { seed, stream: s, dedupe, dedupe_window_ms, triggers: t, planted_bug, .. } => {
                report.seed = *seed;
                report.dedupe = *dedupe;
                report.dedupe_window_ms = *dedupe_window_ms;
                report.planted_bug = planted_bug.clone();
                stream = Some(s.clone());
                triggers = t.clone();
            }
            Op::Invoke { process, source, id, .. } => {
                report.attempts += 1;
                invoked.insert((source.clone(), id.clone()));
                last_invoke.insert(*process, entry.t);
            }
            Op::Ok { process, source, id, .. } => {
                let k = (source.clone(), id.clone());
                acked.insert(k.clone());
                acked_by_process.entry(*process).or_default().push(k.clone());
                acks.push((last_invoke.get(process).copied().unwrap_or(entry.t), entry.t, k));
            }
            Op::Fail { source, id, .. } => {
                refused.insert((source.clone(), id.clone()));
            }
            Op::Info { source, id, .. } => {
                uncertain.insert((source.clone(), id.clone()));
            }
            Op::Phase { .. } | Op::NodeStart { .. } | Op::Note { .. } | Op::FaultEnd { .. } => {}
            Op::Unrecovered { node, reason } => report.unrecovered.push(format!("node {node}: {reason}")),
            Op::Crashed { node, incarnation, exit } => {
                report.crashed.push(format!("node {node} (start {incarnation}) exited by itself: {exit}"))
            }
            Op::FaultStart { fault } => {
                let name = fault.kind().name().to_string();
                *report.faults.entry(name).or_default() += 1;
                if let Fault::Kill { node, leader_of_group: Some(group), .. } = fault {
                    kills.push((entry.t, *node, *group));
                }
            }
            Op::Deliver { trigger, source, id, status, .. } => {
                delivered_any.entry(trigger.clone()).or_default().insert((source.clone(), id.clone()));
                let counts = attempts.entry(trigger.clone()).or_default();
                counts.0 += 1;
                if is_2xx(*status) {
                    *ok_deliveries
                        .entry(trigger.clone())
                        .or_default()
                        .entry((source.clone(), id.clone()))
                        .or_default() += 1;
                } else {
                    counts.1 += 1;
                }
            }
            Op::Offsets { node, incarnation, trigger, committed, is_final } => {
                report.offset_observations += 1;
                for &(partition, offset) in committed {
                    let slot = (*node, *incarnation, trigger.clone(), partition);
                    if let Some(&before) = observed.get(&slot)
                        && offset < before
                    {
                        report.offset_regressions.push(format!(
                            "trigger {trigger} partition {partition} on node {node}: {before} then {offset} at {:.1} s",
                            entry.t as f64 / 1e9
                        ));
                    }
                    observed.insert(slot, offset);
                    let max = observed_max.entry((trigger.clone(), partition)).or_default();
                    *max = (*max).max(offset);
                    if *is_final {
                        finals.entry((trigger.clone(), partition)).or_default().insert(*node, offset);
                    }
                }
            }
            Op::Read { node, stream, partition, events } => {
                reads.entry((stream.clone(), *partition)).or_default().insert(*node, events.clone());
            }
        }
    }
    report.duration_ns = last_t.saturating_sub(first_t.unwrap_or(0));
    for ((trigger, partition), &max) in &observed_max {
        if let Some(fin) = finals.get(&(trigger.clone(), *partition)).and_then(|by_node| by_node.values().max())
            && *fin < max
        {
            report.offset_regressions.push(format!(
                "trigger {trigger} partition {partition}: {max} observed during the run, {fin} at the end"
            ));
        }
    }
    for ((trigger, partition), by_node) in &finals {
        let distinct: BTreeSet<u64> = by_node.values().copied().collect();
        if distinct.len() > 1 {
            let each: Vec<String> = by_node.iter().map(|(node, offset)| format!("node {node} at {offset}")).collect();
            report.offsets_apart.push(format!("trigger {trigger} partition {partition}: {}", each.join(", ")));
        }
    }

    let Some(stream) = stream else {
        report.incomplete_history.push("no start line".into());
        return report;
    };
    if !reads.keys().any(|(s, _)| *s == stream) {
        report.incomplete_history.push(format!("no final read of {stream}"));
    }

    // Copies of each partition: divergence, conflicts, gaps.
    for ((s, partition), copies) in &reads {
        let longest = copies.values().max_by_key(|events| events.len()).cloned().unwrap_or_default();
        for (node, events) in copies {
            if *events != longest {
                let first_difference = events.iter().zip(&longest).position(|(a, b)| a != b);
                report.divergent.push(match first_difference {
                    Some(i) => format!(
                        "{s} partition {partition}: node {node} differs from the longest copy at offset {}",
                        longest[i].offset
                    ),
                    None => format!(
                        "{s} partition {partition}: node {node} has {} events, the longest copy {}",
                        events.len(),
                        longest.len()
                    ),
                });
            }
            if events.windows(2).any(|w| w[1].offset != w[0].offset + 1) {
                report.gaps.push(format!("{s} partition {partition} on node {node}: offsets are not dense"));
            }
        }
        let mut at_offset: BTreeMap<u64, BTreeSet<Key>> = BTreeMap::new();
        for events in copies.values() {
            for e in events {
                at_offset.entry(e.offset).or_default().insert(key(e));
            }
        }
        report.offset_conflicts += at_offset.values().filter(|keys| keys.len() > 1).count();
    }

    // The broker's stream: the most complete copy of each partition, and everything any node holds.
    let mut stored: Vec<(u32, LoggedEvent)> = Vec::new();
    let mut anywhere: BTreeSet<Key> = BTreeSet::new();
    let mut dead_letters: BTreeMap<String, BTreeSet<Key>> = BTreeMap::new();
    for ((s, partition), copies) in &reads {
        if *s == stream {
            if let Some(longest) = copies.values().max_by_key(|events| events.len()) {
                stored.extend(longest.iter().map(|e| (*partition, e.clone())));
            }
            anywhere.extend(copies.values().flatten().map(key));
        }
        for t in triggers.iter().filter(|t| t.dead_letter_stream == *s) {
            dead_letters.entry(t.name.clone()).or_default().extend(copies.values().flatten().map(key));
        }
    }
    report.stored = stored.len();
    report.acknowledged = acked.len();
    report.lost = acked.iter().filter(|k| !anywhere.contains(*k)).cloned().collect();
    report.unexpected = anywhere.iter().filter(|k| !invoked.contains(*k)).cloned().collect();
    let unacked: Vec<&Key> = invoked.iter().filter(|k| !acked.contains(*k)).collect();
    report.failed = unacked.iter().filter(|k| refused.contains(**k)).count();
    report.indeterminate = unacked.len() - report.failed;
    report.indeterminate_stored = unacked.iter().filter(|k| !refused.contains(**k) && anywhere.contains(**k)).count();
    let mut arrivals: BTreeMap<Key, Vec<u64>> = BTreeMap::new();
    for (_, e) in &stored {
        arrivals.entry(key(e)).or_default().push(e.arrival_ms);
    }
    for (k, mut stamps) in arrivals.into_iter().filter(|(_, stamps)| stamps.len() > 1) {
        stamps.sort_unstable();
        match report.dedupe_window_ms {
            Some(window_ms) if stamps.windows(2).all(|pair| pair[1] - pair[0] > window_ms) => {
                report.stored_again_past_window += 1
            }
            _ => report.log_duplicates.push(k),
        }
    }
    report.refused_stored = refused
        .iter()
        .filter(|k| !acked.contains(*k) && !uncertain.contains(*k) && anywhere.contains(*k))
        .cloned()
        .collect();

    // Per producer: an event acknowledged before the next was sent is stored before it in their partition.
    let mut first_copy: HashMap<&Key, (u32, &LoggedEvent)> = HashMap::new();
    for (partition, e) in &stored {
        let k = (e.source.clone(), e.id.clone());
        if let Some(key) = acked.get(&k) {
            first_copy.entry(key).or_insert((*partition, e));
        }
    }
    for (process, keys) in &acked_by_process {
        let mut last_in_partition: BTreeMap<u32, &LoggedEvent> = BTreeMap::new();
        for k in keys {
            let Some((partition, e)) = first_copy.get(k) else { continue };
            if let Some(before) = last_in_partition.get(partition)
                && before.offset > e.offset
            {
                report.out_of_order.push(format!(
                    "producer {process}, partition {partition}: {}/{} (acknowledged first) at offset {}, {}/{} at offset {}",
                    before.source, before.id, before.offset, e.source, e.id, e.offset
                ));
            }
            last_in_partition.insert(*partition, e);
        }
    }

    // Deliveries: only of stored events, and only to Triggers they match.
    let type_of: HashMap<Key, &str> = stored.iter().map(|(_, e)| (key(e), e.event_type.as_str())).collect();
    for trigger in &triggers {
        for k in delivered_any.get(&trigger.name).into_iter().flatten() {
            match type_of.get(k) {
                None if !anywhere.contains(k) => {
                    report.phantom_deliveries.push(format!("trigger {}: {}/{}", trigger.name, k.0, k.1))
                }
                Some(event_type) if trigger.type_filter.as_deref().is_some_and(|t| t != *event_type) => {
                    report.misrouted_deliveries.push(format!(
                        "trigger {} (type {:?}): {}/{} of type {event_type}",
                        trigger.name,
                        trigger.type_filter.as_deref().unwrap_or_default(),
                        k.0,
                        k.1
                    ))
                }
                _ => {}
            }
        }
    }

    // Dispatch.
    for trigger in &triggers {
        let mut figures = TriggerFigures::default();
        let ok = ok_deliveries.get(&trigger.name);
        let dead = dead_letters.get(&trigger.name);
        let mut seen = BTreeSet::new();
        for (_, e) in &stored {
            if trigger.type_filter.as_ref().is_some_and(|t| *t != e.event_type) || !seen.insert(key(e)) {
                continue;
            }
            figures.matching += 1;
            let k = key(e);
            if ok.is_some_and(|ok| ok.contains_key(&k)) {
                figures.delivered += 1;
            } else if dead.is_some_and(|dead| dead.contains(&k)) {
                figures.dead_lettered += 1;
            } else {
                figures.incomplete.push(k);
            }
        }
        figures.duplicate_deliveries = ok.map(|ok| ok.values().map(|n| n - 1).sum()).unwrap_or(0);
        (figures.attempts, figures.failed_attempts) = attempts.get(&trigger.name).copied().unwrap_or_default();
        report.triggers.insert(trigger.name.clone(), figures);
    }

    // Unavailability after leader kills.
    let partition_of: HashMap<Key, u32> = stored.iter().map(|(p, e)| (key(e), *p)).collect();
    for (at, node, group) in kills {
        let window = acks
            .iter()
            .filter(|(invoked_at, _, k)| *invoked_at >= at && partition_of.get(k).is_some_and(|p| p + 1 == group))
            .map(|(_, acked_at, _)| acked_at - at)
            .min();
        report.unavailability.push(Unavailability { at_ns: at, node, group, window_ns: window });
    }
    report
}

/// What one Trigger's dispatcher reports for one partition, as the drain reads it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DispatchProgress {
    /// The stream's end offset.
    pub end_offset: u64,
    /// The next offset the Trigger will deliver (everything before it is settled, through Raft).
    pub committed_offset: u64,
    pub in_flight: u64,
}

/// How far a partition is from drained, for one Trigger: the matching events neither delivered (2xx) nor
/// dead-lettered yet, plus one while its dispatcher has not committed past the end of the stream or still has
/// deliveries in flight. A delivered event is not enough: after a failover an event delivered by the old leader
/// can be delivered again, fail, and be dead-lettered later; reading the copies before that dead letter is
/// written (on some nodes but not others) looks like a divergence. Drained is 0.
pub fn undrained(
    events: &[LoggedEvent],
    spec: &TriggerSpec,
    delivered: impl Fn(&Key) -> bool,
    dead_lettered: &BTreeSet<Key>,
    progress: DispatchProgress,
) -> usize {
    let unsettled = events
        .iter()
        .filter(|e| spec.type_filter.as_ref().is_none_or(|t| *t == e.event_type))
        .map(key)
        .filter(|k| !delivered(k) && !dead_lettered.contains(k))
        .count();
    let dispatching = progress.committed_offset < progress.end_offset || progress.in_flight > 0;
    unsettled + usize::from(dispatching)
}

#[cfg(test)]
mod tests;
