//! Time-bucketed windows, as Knative's autoscaler keeps its metrics (`pkg/autoscaler/aggregation`).
//!
//! [`WindowAverage`]: values recorded into buckets of `bucket_ms`; the average over the last `window_ms`
//! counts a gap as zero, divides by the buckets since the first write while the window is not full yet (a
//! partial window), shrinks the denominator over trailing silence, and is zero once nothing was written for a
//! whole window. A write older than the newest bucket is added to its bucket if still in the window, else
//! dropped, as in Knative. Buckets are counted from the newest write, rounding to the nearest bucket, not on a
//! fixed grid: the samples come from a tick of the bucket's length whose phase is arbitrary, and on a grid two
//! ticks a few milliseconds either side of a boundary filed two samples in one bucket (its value doubled, a
//! false panic in a one-bucket panic window) and none in the next.
//!
//! [`MaxWindow`]: the largest value recorded over the last `n` buckets, for `scale-down-delay`.

use std::collections::VecDeque;

/// Rounds to 6 decimals, as Knative does before taking `ceil` (so that 3.0000000001 does not become 4).
pub(crate) fn round6(value: f64) -> f64 {
    (value * 1e6).round() / 1e6
}

#[derive(Clone, Debug)]
pub(crate) struct WindowAverage {
    bucket_ms: u64,
    buckets: usize,
    /// (bucket index, sum), oldest first; indices increase.
    values: VecDeque<(u64, f64)>,
    first_write: Option<u64>,
    last_write: Option<u64>,
    /// The newest write: (time, bucket index). Other times find their bucket from it.
    anchor: Option<(u64, u64)>,
}

impl WindowAverage {
    pub(crate) fn new(window_ms: u64, bucket_ms: u64) -> Self {
        let bucket_ms = bucket_ms.max(1);
        let buckets = window_ms.div_ceil(bucket_ms).max(1) as usize;
        WindowAverage { bucket_ms, buckets, values: VecDeque::new(), first_write: None, last_write: None, anchor: None }
    }

    /// The bucket of `now_ms`: whole buckets from the newest write's, to the nearest (the grid's own before any).
    fn index_at(&self, now_ms: u64) -> u64 {
        let Some((at_ms, at_index)) = self.anchor else { return now_ms / self.bucket_ms };
        let half = self.bucket_ms / 2;
        if now_ms >= at_ms {
            at_index.saturating_add((now_ms - at_ms + half) / self.bucket_ms)
        } else {
            at_index.saturating_sub((at_ms - now_ms + half) / self.bucket_ms)
        }
    }

    pub(crate) fn record(&mut self, now_ms: u64, value: f64) {
        let index = self.index_at(now_ms);
        if self.anchor.is_none_or(|(_, newest)| index >= newest) {
            self.anchor = Some((now_ms, index));
        }
        let window = self.buckets as u64;
        match self.last_write {
            Some(last) if index + window <= last => return,
            Some(last) if index > last && index - last >= window => {
                // Silence for a whole window: start again.
                self.values.clear();
                self.first_write = Some(index);
            }
            None => self.first_write = Some(index),
            Some(_) => {}
        }
        if self.first_write.is_none_or(|first| first > index) {
            self.first_write = Some(index);
        }
        // From the newest end: nearly every write is to the newest bucket or a new one after it, and a window
        // may hold many buckets (an hour of 10 ms ones).
        match self.values.iter_mut().rev().find(|(i, _)| *i <= index) {
            Some((i, sum)) if *i == index => *sum += value,
            _ => {
                let after = self.values.iter().rev().take_while(|(i, _)| *i > index).count();
                self.values.insert(self.values.len() - after, (index, value));
            }
        }
        self.last_write = Some(self.last_write.map_or(index, |last| last.max(index)));
        while let (Some((oldest, _)), Some(last)) = (self.values.front(), self.last_write) {
            if *oldest + window <= last {
                self.values.pop_front();
            } else {
                break;
            }
        }
    }

    /// Whether nothing was written for more than a window.
    #[cfg(test)]
    pub(crate) fn is_empty(&self, now_ms: u64) -> bool {
        match self.last_write {
            None => true,
            Some(last) => self.index_at(now_ms) > last + self.buckets as u64,
        }
    }

    pub(crate) fn average(&self, now_ms: u64) -> f64 {
        let (Some(first), Some(last)) = (self.first_write, self.last_write) else { return 0.0 };
        let now = self.index_at(now_ms);
        let window = self.buckets as u64;
        let since = now.saturating_sub(last);
        if since >= window {
            return 0.0;
        }
        // Buckets that trailing silence pushed out of the window are no longer counted.
        let oldest = (now + 1).saturating_sub(window);
        let total: f64 = self.values.iter().filter(|(i, _)| *i >= oldest).map(|(_, v)| v).sum();
        let written = (last - first + 1).min(window - since);
        round6(total / written as f64)
    }
}

/// The largest value recorded over the last `n` buckets.
#[derive(Clone, Debug)]
pub(crate) struct MaxWindow {
    bucket_ms: u64,
    buckets: u64,
    /// (bucket index, value), values decreasing from the front.
    values: VecDeque<(u64, u32)>,
}

impl MaxWindow {
    pub(crate) fn new(window_ms: u64, bucket_ms: u64) -> Self {
        let bucket_ms = bucket_ms.max(1);
        MaxWindow { bucket_ms, buckets: window_ms.div_ceil(bucket_ms).max(1), values: VecDeque::new() }
    }

    /// Records `value` at `now_ms` and answers the largest value over the window.
    pub(crate) fn record(&mut self, now_ms: u64, value: u32) -> u32 {
        let index = now_ms / self.bucket_ms;
        while self.values.back().is_some_and(|(_, v)| *v <= value) {
            self.values.pop_back();
        }
        while self.values.front().is_some_and(|(i, _)| index.saturating_sub(*i) >= self.buckets) {
            self.values.pop_front();
        }
        match self.values.back_mut() {
            Some((i, v)) if *i == index => *v = (*v).max(value),
            _ => self.values.push_back((index, value)),
        }
        self.values.front().map_or(value, |(_, v)| *v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Knative's `TestTimedFloat64BucketsWindowAverage`, window 5 s, buckets of 1 s.
    #[test]
    fn averages_as_knatives_buckets_do() {
        let mut w = WindowAverage::new(5_000, 1_000);
        assert!(w.is_empty(0));
        w.record(0, 1.0);
        assert_eq!(w.average(0), 1.0, "a partial window divides by the buckets written");
        for (t, v) in [(1, 2.0), (2, 3.0), (3, 4.0), (4, 5.0)] {
            w.record(t * 1_000, v);
        }
        assert_eq!(w.average(4_000), 3.0);
        assert_eq!(w.average(3_600), 3.0);
        assert_eq!(w.average(6_000), 4.0, "trailing silence pushes the oldest out and shrinks the denominator");
        assert_eq!(w.average(10_000), 0.0, "nothing for a whole window");
        assert!(w.is_empty(10_000) && !w.is_empty(9_000));
        w.record(6_000, 91.0);
        assert_eq!(w.average(6_000), 20.6, "a gap counts as zero");
        let mut reset = w.clone();
        reset.record(66_000, 1984.0);
        assert_eq!(reset.average(66_000), 1984.0, "silence for a window starts again");
        reset.record(63_000, 4.0);
        assert_eq!(reset.average(66_000), 497.0, "a late write moves the first write back");
        reset.record(67_000, 5.0);
        assert_eq!(reset.average(67_000), 398.6);
        reset.record(64_000, 10.0);
        assert_eq!(reset.average(67_000), 400.6);
        reset.record(61_000, 10.0);
        reset.record(62_000, 10.0);
        assert_eq!(reset.average(67_000), 400.6, "writes older than the window are dropped");
        reset.record(72_000, 10.0);
        assert_eq!(reset.average(72_000), 10.0);
    }

    /// Regression: buckets on a fixed grid filed a tick just before a boundary and the next just after it in
    /// the same bucket (2999 and 2001 both in bucket 2): a one-bucket panic window saw twice the load, and the
    /// bucket after it none.
    #[test]
    fn ticks_either_side_of_a_boundary_fill_one_bucket_each() {
        let mut w = WindowAverage::new(1_000, 1_000);
        for t in [999, 2_001, 2_999, 4_001, 4_999, 6_003, 6_998] {
            w.record(t, 2.0);
            assert_eq!(w.average(t), 2.0, "at {t}");
            assert_eq!(w.average(t + 5), 2.0, "just after {t}");
        }
        let mut stable = WindowAverage::new(6_000, 1_000);
        for t in [999, 2_001, 2_999, 4_001, 4_999, 6_003, 6_998] {
            stable.record(t, 3.0);
        }
        assert_eq!(stable.average(6_998), 3.0, "no bucket doubled, none empty");
    }

    #[test]
    fn descending_writes_keep_only_the_window() {
        let mut w = WindowAverage::new(5_000, 1_000);
        for t in (0..=8).rev() {
            w.record(t * 1_000, 5.0);
        }
        assert_eq!(w.average(5_000), 5.0);
    }

    #[test]
    fn the_max_window_keeps_a_value_for_its_buckets() {
        // Knative's scale-down delay: 300 s in buckets of 2 s.
        let mut w = MaxWindow::new(300_000, 2_000);
        assert_eq!(w.record(2_000, 4), 4);
        assert_eq!(w.record(300_000, 0), 4, "149 buckets later, still within the delay");
        assert_eq!(w.record(302_000, 0), 0, "150 buckets later, out");
        assert_eq!(w.record(540_000, 4), 4);
        assert_eq!(w.record(600_000, 3), 4);
        assert_eq!(w.record(660_000, 0), 4);
        assert_eq!(w.record(840_000, 0), 3);
        assert_eq!(w.record(900_000, 0), 0);
    }
}
