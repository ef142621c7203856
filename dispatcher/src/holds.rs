//! Which partitions this node leads but must not dispatch: a planned leadership transfer handed their dispatch
//! over, and the leadership has not left yet.
//!
//! What flows in: a handover starting, the end of its transfer attempt (moved or not), the clock and which
//! partitions this node still leads. What flows out: whether a partition is held, when the next hold runs out,
//! and why each hold ended (for the metric). Plain data with the instant passed in; the supervisor acts on it.
//!
//! A hold ends at the first of: this node no longer leads the partition (the transfer happened), the transfer
//! attempt is over while this node still leads (it failed: dispatch here again at once), or `max_hold` passed
//! (a last bound, should the attempt's end never be reported).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// Why a hold ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HoldEnd {
    LeadershipLeft,
    TransferOver,
    Expired,
}

impl HoldEnd {
    pub(crate) fn label(self) -> &'static str {
        match self {
            HoldEnd::LeadershipLeft => "leadership_left",
            HoldEnd::TransferOver => "transfer_over",
            HoldEnd::Expired => "expired",
        }
    }
}

/// One handover's hold; `id` tells a later handover of the same partition from an earlier one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HoldId {
    pub partition: u32,
    id: u64,
}

#[derive(Debug)]
pub(crate) struct Holds {
    max_hold: Duration,
    held: HashMap<u32, (Instant, u64)>,
    next_id: u64,
}

impl Holds {
    pub(crate) fn new(max_hold: Duration) -> Self {
        Self { max_hold, held: HashMap::new(), next_id: 0 }
    }

    /// A handover of `partition` starts now: hold it (a later handover replaces an earlier hold).
    pub(crate) fn start(&mut self, partition: u32, now: Instant) -> HoldId {
        self.next_id += 1;
        self.held.insert(partition, (now + self.max_hold, self.next_id));
        HoldId { partition, id: self.next_id }
    }

    /// The transfer attempt of `hold` is over. Ends that hold if it is still the partition's current one
    /// (`true`); a newer handover's hold stays.
    pub(crate) fn transfer_over(&mut self, hold: HoldId) -> bool {
        match self.held.get(&hold.partition) {
            Some((_, id)) if *id == hold.id => {
                self.held.remove(&hold.partition);
                true
            }
            _ => false,
        }
    }

    /// Ends the holds of partitions this node no longer leads and those past their bound.
    pub(crate) fn expire(&mut self, now: Instant, leads: impl Fn(u32) -> bool) -> Vec<(u32, HoldEnd)> {
        let mut ended = Vec::new();
        self.held.retain(|partition, (until, _)| {
            let end = if !leads(*partition) {
                Some(HoldEnd::LeadershipLeft)
            } else if *until <= now {
                Some(HoldEnd::Expired)
            } else {
                None
            };
            if let Some(end) = end {
                ended.push((*partition, end));
            }
            end.is_none()
        });
        ended.sort_by_key(|(partition, _)| *partition);
        ended
    }

    pub(crate) fn is_held(&self, partition: u32) -> bool {
        self.held.contains_key(&partition)
    }

    /// When the next hold runs out, if any is held.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.held.values().map(|(until, _)| *until).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(5);

    #[test]
    fn a_failed_transfer_ends_the_hold_while_this_node_still_leads() {
        let now = Instant::now();
        let mut holds = Holds::new(MAX);
        let hold = holds.start(1, now);
        assert!(holds.is_held(1));
        assert_eq!(holds.expire(now + Duration::from_secs(1), |_| true), vec![]);
        assert!(holds.transfer_over(hold));
        assert!(!holds.is_held(1));
        assert_eq!(holds.next_expiry(), None);
        assert!(!holds.transfer_over(hold), "ends once");
    }

    #[test]
    fn leadership_leaving_ends_the_hold_before_the_attempt_reports() {
        let now = Instant::now();
        let mut holds = Holds::new(MAX);
        let hold = holds.start(2, now);
        holds.start(3, now);
        assert_eq!(holds.expire(now, |partition| partition != 2), vec![(2, HoldEnd::LeadershipLeft)]);
        assert!(!holds.is_held(2) && holds.is_held(3));
        assert!(!holds.transfer_over(hold), "already ended");
    }

    #[test]
    fn an_unreported_attempt_is_bounded_by_the_longest_hold() {
        let now = Instant::now();
        let mut holds = Holds::new(MAX);
        holds.start(0, now);
        holds.start(1, now + Duration::from_secs(1));
        assert_eq!(holds.next_expiry(), Some(now + MAX));
        assert_eq!(holds.expire(now + MAX - Duration::from_millis(1), |_| true), vec![]);
        assert_eq!(holds.expire(now + MAX, |_| true), vec![(0, HoldEnd::Expired)]);
        assert_eq!(holds.next_expiry(), Some(now + Duration::from_secs(1) + MAX));
    }

    #[test]
    fn the_end_of_an_earlier_attempt_does_not_end_a_later_handovers_hold() {
        let now = Instant::now();
        let mut holds = Holds::new(MAX);
        let first = holds.start(4, now);
        let second = holds.start(4, now + Duration::from_millis(100));
        assert!(!holds.transfer_over(first));
        assert!(holds.is_held(4));
        assert!(holds.transfer_over(second));
        assert!(!holds.is_held(4));
    }
}
