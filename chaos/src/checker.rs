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
    pub log_duplicates: Vec<Key>,
    pub triggers: BTreeMap<String, TriggerFigures>,
    pub offset_observations: usize,
    pub offset_regressions: Vec<String>,
    pub unavailability: Vec<Unavailability>,
    /// Nodes that did not recover after healing (not ready, or unreadable): the cluster did not heal.
    pub unrecovered: Vec<String>,
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
        out.extend(self.unrecovered.iter().map(|u| format!("not recovered after healing: {u}")));
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
                self.log_duplicates.len().to_string(),
            ),
            ("DISPATCH INCOMPLETE", self.dispatch_incomplete().to_string()),
            ("NOT RECOVERED nodes", self.unrecovered.len().to_string()),
            (
                "COMMITTED OFFSET regressions",
                format!("{} (of {} observations)", self.offset_regressions.len(), self.offset_observations),
            ),
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
    let mut final_max: BTreeMap<(String, u32), u64> = BTreeMap::new();
    let mut first_t = None;
    let mut last_t = 0;

    for entry in history {
        first_t.get_or_insert(entry.t);
        last_t = last_t.max(entry.t);
        match &entry.op {
            Op::Start { seed, stream: s, dedupe, triggers: t, planted_bug, .. } => {
                report.seed = *seed;
                report.dedupe = *dedupe;
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
                acks.push((last_invoke.get(process).copied().unwrap_or(entry.t), entry.t, k));
            }
            Op::Fail { source, id, .. } => {
                refused.insert((source.clone(), id.clone()));
            }
            Op::Info { .. } | Op::Phase { .. } | Op::NodeStart { .. } | Op::Note { .. } | Op::FaultEnd { .. } => {}
            Op::Unrecovered { node, reason } => report.unrecovered.push(format!("node {node}: {reason}")),
            Op::FaultStart { fault } => {
                let name = fault.kind().name().to_string();
                *report.faults.entry(name).or_default() += 1;
                if let Fault::Kill { node, leader_of_group: Some(group), .. } = fault {
                    kills.push((entry.t, *node, *group));
                }
            }
            Op::Deliver { trigger, source, id, status, .. } => {
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
                        let max = final_max.entry((trigger.clone(), partition)).or_default();
                        *max = (*max).max(offset);
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
        if let Some(&fin) = final_max.get(&(trigger.clone(), *partition))
            && fin < max
        {
            report.offset_regressions.push(format!(
                "trigger {trigger} partition {partition}: {max} observed during the run, {fin} at the end"
            ));
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
    let mut counts: BTreeMap<Key, usize> = BTreeMap::new();
    for (_, e) in &stored {
        *counts.entry(key(e)).or_default() += 1;
    }
    report.log_duplicates = counts.into_iter().filter(|(_, n)| *n > 1).map(|(k, _)| k).collect();

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
mod tests {
    use super::*;

    const STREAM: &str = "broker/default/chaos";

    struct H {
        entries: Vec<Entry>,
        t: u64,
    }

    fn ev(offset: u64, source: &str, id: &str, event_type: &str) -> LoggedEvent {
        LoggedEvent { offset, source: source.into(), id: id.into(), event_type: event_type.into() }
    }

    impl H {
        fn new() -> Self {
            let mut h = H { entries: Vec::new(), t: 0 };
            h.push(Op::Start {
                seed: 42,
                nodes: 3,
                partitions: 1,
                faults: vec!["kill".into()],
                network: "namespaces".into(),
                stream: STREAM.into(),
                dedupe: true,
                triggers: vec![
                    TriggerSpec {
                        name: "all".into(),
                        type_filter: None,
                        dead_letter_stream: "deadletter/trigger/default/all".into(),
                    },
                    TriggerSpec {
                        name: "b".into(),
                        type_filter: Some("b".into()),
                        dead_letter_stream: "deadletter/trigger/default/b".into(),
                    },
                ],
                planted_bug: None,
            });
            h
        }

        fn push(&mut self, op: Op) -> &mut Self {
            self.t += 1_000_000;
            self.entries.push(Entry { t: self.t, wall_ms: self.t / 1_000_000, op });
            self
        }

        fn publish(&mut self, process: usize, id: &str, outcome: &str) -> &mut Self {
            let (source, id) = (format!("p{process}"), id.to_string());
            self.push(Op::Invoke { process, source: source.clone(), id: id.clone(), node: 1 });
            match outcome {
                "ok" => self.push(Op::Ok { process, source, id, node: 1 }),
                "fail" => self.push(Op::Fail { process, source, id, node: 1, status: 400, error: "bad".into() }),
                _ => self.push(Op::Info { process, source, id, node: 1, error: "timeout".into() }),
            }
        }

        fn deliver(&mut self, trigger: &str, source: &str, id: &str, status: u16) -> &mut Self {
            self.push(Op::Deliver { trigger: trigger.into(), source: source.into(), id: id.into(), attempt: 1, status })
        }

        fn read(&mut self, node: u64, stream: &str, events: Vec<LoggedEvent>) -> &mut Self {
            self.push(Op::Read { node, stream: stream.into(), partition: 0, events })
        }

        fn offsets(&mut self, node: u64, incarnation: u32, offset: u64, is_final: bool) -> &mut Self {
            self.push(Op::Offsets { node, incarnation, trigger: "all".into(), committed: vec![(0, offset)], is_final })
        }

        /// Two events acknowledged (a: type a, b: type b), read identically on three nodes, delivered to
        /// both triggers as they match.
        fn clean() -> Self {
            let mut h = H::new();
            h.publish(0, "1", "ok").publish(0, "2", "ok");
            h.deliver("all", "p0", "1", 200).deliver("all", "p0", "2", 200).deliver("b", "p0", "2", 202);
            h.offsets(1, 1, 1, false).offsets(1, 1, 2, true);
            for node in 1..=3 {
                h.read(node, STREAM, vec![ev(0, "p0", "1", "a"), ev(1, "p0", "2", "b")]);
            }
            h
        }

        fn check(&self) -> Report {
            check(&self.entries)
        }
    }

    #[test]
    fn a_clean_history_is_clean() {
        let report = H::clean().check();
        assert_eq!(report.violations(), Vec::<String>::new());
        assert_eq!(report.acknowledged, 2);
        assert_eq!(report.stored, 2);
        assert_eq!(report.attempts, 2);
        assert_eq!(report.triggers["all"].matching, 2);
        assert_eq!(report.triggers["all"].delivered, 2);
        assert_eq!(report.triggers["b"].matching, 1, "the type filter applies");
        assert_eq!(report.seed, 42);
        assert!(report.to_string().contains("OK: no safety violation"));
    }

    #[test]
    fn an_acknowledged_event_missing_everywhere_is_lost() {
        let mut h = H::clean();
        h.publish(1, "9", "ok");
        let report = h.check();
        assert_eq!(report.lost, vec![("p1".to_string(), "9".to_string())]);
        assert!(report.violations()[0].contains("1 acknowledged events lost"));
        assert!(report.to_string().contains("VIOLATION"));
    }

    #[test]
    fn indeterminate_and_refused_events_may_be_missing_or_stored() {
        let mut h = H::new();
        h.publish(0, "1", "info").publish(0, "2", "info").publish(0, "3", "fail");
        h.read(1, STREAM, vec![ev(0, "p0", "1", "a")]);
        h.deliver("all", "p0", "1", 200);
        let report = h.check();
        assert_eq!(report.violations(), Vec::<String>::new());
        assert_eq!((report.indeterminate, report.indeterminate_stored, report.failed), (2, 1, 1));
    }

    #[test]
    fn an_event_never_sent_is_unexpected() {
        let mut h = H::clean();
        h.read(1, STREAM, vec![ev(0, "p0", "1", "a"), ev(1, "p0", "2", "b"), ev(2, "ghost", "1", "a")]);
        let report = h.check();
        assert_eq!(report.unexpected, vec![("ghost".to_string(), "1".to_string())]);
        assert!(report.violations().iter().any(|v| v.contains("unexpected")));
    }

    #[test]
    fn a_shorter_copy_is_divergence() {
        let mut h = H::clean();
        h.read(3, STREAM, vec![ev(0, "p0", "1", "a")]);
        let report = h.check();
        assert_eq!(report.divergent.len(), 1, "{:?}", report.divergent);
        assert!(report.divergent[0].contains("node 3 has 1 events"));
        assert_eq!(report.offset_conflicts, 0);
        assert!(report.lost.is_empty(), "still on other nodes: divergence, not loss");
    }

    #[test]
    fn two_events_at_one_offset_are_a_conflict() {
        let mut h = H::clean();
        h.publish(0, "3", "info");
        h.read(2, STREAM, vec![ev(0, "p0", "1", "a"), ev(1, "p0", "3", "b")]);
        let report = h.check();
        assert_eq!(report.offset_conflicts, 1);
        assert!(report.divergent.iter().any(|d| d.contains("node 2 differs") && d.contains("offset 1")));
        assert!(report.violations().iter().any(|v| v.contains("1 offsets hold different events")));
    }

    #[test]
    fn offsets_that_are_not_dense_are_a_gap() {
        let mut h = H::clean();
        for node in 1..=3 {
            h.read(node, STREAM, vec![ev(0, "p0", "1", "a"), ev(2, "p0", "2", "b")]);
        }
        let report = h.check();
        assert_eq!(report.gaps.len(), 3);
        assert!(report.divergent.is_empty());
    }

    #[test]
    fn duplicates_in_the_log_violate_only_with_dedupe() {
        let mut h = H::clean();
        for node in 1..=3 {
            h.read(node, STREAM, vec![ev(0, "p0", "1", "a"), ev(1, "p0", "2", "b"), ev(2, "p0", "1", "a")]);
        }
        let report = h.check();
        assert_eq!(report.log_duplicates, vec![("p0".to_string(), "1".to_string())]);
        assert!(report.violations().iter().any(|v| v.contains("stored twice")));
        let mut no_dedupe = h.entries.clone();
        if let Op::Start { dedupe, .. } = &mut no_dedupe[0].op {
            *dedupe = false;
        }
        let report = check(&no_dedupe);
        assert_eq!(report.log_duplicates.len(), 1, "still reported");
        assert_eq!(report.violations(), Vec::<String>::new());
    }

    #[test]
    fn an_undelivered_matching_event_is_dispatch_incomplete_unless_dead_lettered() {
        let mut h = H::new();
        h.publish(0, "1", "ok").publish(0, "2", "ok").publish(0, "3", "ok");
        for node in 1..=3 {
            h.read(node, STREAM, vec![ev(0, "p0", "1", "a"), ev(1, "p0", "2", "b"), ev(2, "p0", "3", "b")]);
        }
        h.deliver("all", "p0", "1", 200).deliver("all", "p0", "2", 200).deliver("all", "p0", "3", 200);
        h.deliver("all", "p0", "3", 200);
        // Trigger b: event 2 failed then succeeded; event 3 failed only.
        h.deliver("b", "p0", "2", 500).deliver("b", "p0", "2", 200).deliver("b", "p0", "3", 500);
        let report = h.check();
        assert_eq!(report.triggers["b"].incomplete, vec![("p0".to_string(), "3".to_string())]);
        assert_eq!(report.triggers["b"].failed_attempts, 2);
        assert_eq!(report.triggers["all"].duplicate_deliveries, 1);
        assert!((report.triggers["all"].duplicate_rate() - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(report.dispatch_incomplete(), 1);
        assert!(report.violations().iter().any(|v| v.contains("trigger b: 1 matching events")));
        // Dead-lettered on one node: complete.
        h.read(2, "deadletter/trigger/default/b", vec![ev(0, "p0", "3", "b")]);
        let report = h.check();
        assert_eq!(report.dispatch_incomplete(), 0);
        assert_eq!(report.triggers["b"].dead_lettered, 1);
        // ... but one node's dead-letter stream alone is a divergence.
        assert_eq!(report.divergent.len(), 0, "a copy read on one node only is the longest");
    }

    #[test]
    fn committed_offsets_must_not_go_back() {
        let mut h = H::clean();
        h.offsets(2, 1, 5, false).offsets(2, 2, 3, false);
        assert_eq!(h.check().offset_regressions.len(), 1, "the final offset (2) is below 5");
        let mut h = H::clean();
        h.offsets(2, 1, 2, false).offsets(2, 2, 1, false);
        assert_eq!(h.check().violations(), Vec::<String>::new(), "a restarted node may start lower");
        h.offsets(2, 2, 0, false);
        let report = h.check();
        assert_eq!(report.offset_regressions.len(), 1, "{:?}", report.offset_regressions);
        assert!(report.offset_regressions[0].contains("on node 2: 1 then 0"));
    }

    #[test]
    fn the_window_after_a_leader_kill_ends_with_the_first_ack_in_its_partition() {
        let mut h = H::new();
        h.publish(0, "1", "ok");
        h.push(Op::FaultStart { fault: Fault::Kill { n: 1, node: 2, leader_of_group: Some(1) } });
        h.publish(0, "2", "info").publish(1, "3", "info").publish(1, "3", "ok").publish(0, "2", "ok");
        // Another group's leader kill, with no ack in a partition of group 2 after it.
        h.push(Op::FaultStart { fault: Fault::Kill { n: 2, node: 3, leader_of_group: Some(2) } });
        h.push(Op::FaultStart { fault: Fault::Kill { n: 3, node: 1, leader_of_group: None } });
        for node in 1..=3 {
            h.read(node, STREAM, vec![ev(0, "p0", "1", "a"), ev(1, "p1", "3", "a"), ev(2, "p0", "2", "a")]);
        }
        for id in ["1", "2"] {
            h.deliver("all", "p0", id, 200);
        }
        h.deliver("all", "p1", "3", 200);
        let report = h.check();
        assert_eq!(report.violations(), Vec::<String>::new());
        assert_eq!(report.faults["kill"], 3);
        assert_eq!(report.unavailability.len(), 2);
        // p1/3's second attempt: invoked 5 ms after the kill, acknowledged 6 ms after it.
        assert_eq!(report.unavailability[0].window_ns, Some(6_000_000));
        assert_eq!(report.unavailability[1].window_ns, None);
        assert!(report.to_string().contains("no ack after the kill"));
    }

    #[test]
    fn unavailability_percentiles_are_nearest_rank_and_a_kill_without_ack_is_the_longest() {
        let windows = |ms: &[Option<u64>]| -> Vec<Unavailability> {
            ms.iter()
                .map(|w| Unavailability { at_ns: 0, node: 1, group: 1, window_ns: w.map(|ms| ms * 1_000_000) })
                .collect()
        };
        assert_eq!(UnavailabilitySummary::of(&[]), None);
        // (windows in ms, p50 ms, p99 ms)
        type Row<'a> = (&'a [Option<u64>], Option<u64>, Option<u64>);
        let table: [Row; 4] = [
            (&[Some(700)], Some(700), Some(700)),
            (&[Some(900), Some(100), Some(500)], Some(500), Some(900)),
            (&[Some(100), None, Some(300)], Some(300), None),
            (&[Some(10); 100], Some(10), Some(10)),
        ];
        for (input, p50, p99) in table {
            let summary = UnavailabilitySummary::of(&windows(input)).expect("kills");
            assert_eq!(summary.kills, input.len());
            assert_eq!(summary.p50_ns, p50.map(|ms| ms * 1_000_000), "p50 of {input:?}");
            assert_eq!(summary.p99_ns, p99.map(|ms| ms * 1_000_000), "p99 of {input:?}");
        }
        // 100 kills, one slow: p99 is the 99th, not the slow one.
        let mut many = vec![Some(200u64); 99];
        many.push(Some(5_000));
        let summary = UnavailabilitySummary::of(&windows(&many)).expect("kills");
        assert_eq!(summary.p99_ns, Some(200_000_000));
    }

    #[test]
    fn a_node_that_did_not_recover_is_reported() {
        let mut h = H::clean();
        h.push(Op::Unrecovered { node: 3, reason: "not ready within 60 s".into() });
        let report = h.check();
        assert_eq!(report.unrecovered, vec!["node 3: not ready within 60 s".to_string()]);
        assert!(report.violations().iter().any(|v| v.contains("not recovered after healing: node 3")));
    }

    #[test]
    fn a_history_without_final_reads_cannot_pass() {
        let mut h = H::new();
        h.publish(0, "1", "ok");
        let report = h.check();
        assert!(report.violations().iter().any(|v| v.contains("no final read")));
        assert!(!check(&[]).violations().is_empty());
    }

    #[test]
    fn histories_round_trip_through_json_lines() {
        let h = H::clean();
        let text: Vec<String> = h.entries.iter().map(|e| serde_json::to_string(e).unwrap_or_default()).collect();
        let back: Vec<Entry> = text.iter().filter_map(|line| serde_json::from_str(line).ok()).collect();
        assert_eq!(back, h.entries);
        assert!(text[1].contains("\"op\":\"invoke\""), "{}", text[1]);
    }

    #[test]
    fn regression_a_delivered_event_still_being_retried_after_a_failover_is_not_drained() {
        // seed 9001: `/chaos/p1` 4393 was delivered before a failover, then delivered again by the new leader,
        // failed five times and was dead-lettered 160 ms after the drain had ended and node 1 had been read.
        let spec = TriggerSpec { name: "t-b".into(), type_filter: Some("b".into()), dead_letter_stream: "dl".into() };
        let event = |offset: u64, id: &str, event_type: &str| LoggedEvent {
            offset,
            source: "/chaos/p1".into(),
            id: id.into(),
            event_type: event_type.into(),
        };
        let events = [event(0, "4392", "a"), event(1, "4393", "b")];
        let delivered = |k: &Key| k.1 == "4393";
        let none = BTreeSet::new();
        let retrying = DispatchProgress { end_offset: 2, committed_offset: 1, in_flight: 1 };
        assert_eq!(undrained(&events, &spec, delivered, &none, retrying), 1, "delivered once is not settled");
        let committed = DispatchProgress { end_offset: 2, committed_offset: 2, in_flight: 0 };
        assert_eq!(undrained(&events, &spec, delivered, &none, committed), 0);
        // Committed but never delivered nor dead-lettered: incomplete (the checker's dispatch-complete says so).
        assert_eq!(undrained(&events, &spec, |_: &Key| false, &none, committed), 1);
        let dead = BTreeSet::from([("/chaos/p1".to_string(), "4393".to_string())]);
        assert_eq!(undrained(&events, &spec, |_: &Key| false, &dead, committed), 0);
        // An event the filter does not match is not the Trigger's.
        let all = TriggerSpec { type_filter: None, ..spec.clone() };
        assert_eq!(undrained(&events, &all, |_: &Key| false, &dead, committed), 1, "4392 is t-all's");
    }
}
