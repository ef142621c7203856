//! `sluice.dev/rate-limit`: a token bucket per consumer and partition, on the caller's clock.
//!
//! Pure: the caller passes `now_ms` and, when the bucket is empty, sleeps until [`TokenBucket::next_token_ms`].

/// The longest [`TokenBucket::next_token_ms`] waits before it is asked again.
const MAX_WAIT_MS: u64 = 24 * 3600 * 1000;

#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last_ms: u64,
}

impl TokenBucket {
    /// `per_second` events per second on average, bursts of at most `burst` (at least 1).
    pub(crate) fn new(per_second: f64, burst: f64, now_ms: u64) -> Self {
        let burst = burst.max(1.0);
        TokenBucket { per_second: per_second.max(f64::MIN_POSITIVE), burst, tokens: burst, last_ms: now_ms }
    }

    fn refill(&mut self, now_ms: u64) {
        let elapsed_ms = now_ms.saturating_sub(self.last_ms);
        self.tokens = (self.tokens + elapsed_ms as f64 * self.per_second / 1000.0).min(self.burst);
        // A clock stepped back mints nothing and counts on from where it is now. Regression: the bucket kept the
        // later instant, and minted nothing until the clock had caught up with it again (a wall clock stepped
        // back ten minutes stopped every rate-limited consumer for ten minutes).
        self.last_ms = now_ms;
    }

    /// Takes one token if there is one.
    pub(crate) fn try_take(&mut self, now_ms: u64) -> bool {
        self.refill(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token will be there.
    pub(crate) fn next_token_ms(&mut self, now_ms: u64) -> u64 {
        self.refill(now_ms);
        if self.tokens >= 1.0 {
            return now_ms;
        }
        let missing = 1.0 - self.tokens;
        // A tiny rate (or one split among many partitions) must not overflow the instant: the wait is capped, and
        // the bucket is asked again then.
        let wait_ms = (missing * 1000.0 / self.per_second).ceil().min(MAX_WAIT_MS as f64) as u64;
        now_ms.saturating_add(wait_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_rate_and_the_burst_and_no_more() {
        let mut bucket = TokenBucket::new(10.0, 2.0, 1_000);
        assert!(bucket.try_take(1_000));
        assert!(bucket.try_take(1_000));
        assert!(!bucket.try_take(1_000), "burst used up");
        assert_eq!(bucket.next_token_ms(1_000), 1_100);
        assert!(!bucket.try_take(1_099));
        assert!(bucket.try_take(1_100));
        // Over 10 seconds at most 10/s (plus the burst) get through.
        let mut taken = 0;
        for now in (1_100..11_100).step_by(7) {
            if bucket.try_take(now) {
                taken += 1;
            }
        }
        assert!((99..=102).contains(&taken), "{taken}");
    }

    /// Regression: `sluice.dev/rate-limit: "1e-20"` made the next token's instant overflow (a panic in debug
    /// builds; in release a wrapped instant, and a dispatcher waking every millisecond).
    #[test]
    fn a_tiny_rate_waits_at_most_a_day_and_never_overflows() {
        for rate in [1e-20, f64::MIN_POSITIVE, 0.0] {
            let mut bucket = TokenBucket::new(rate, 1.0, u64::MAX - 10);
            assert!(bucket.try_take(u64::MAX - 10));
            assert_eq!(bucket.next_token_ms(u64::MAX - 10), u64::MAX, "{rate}");
            let mut bucket = TokenBucket::new(rate, 1.0, 0);
            assert!(bucket.try_take(0));
            assert_eq!(bucket.next_token_ms(0), MAX_WAIT_MS, "{rate}");
        }
    }

    #[test]
    fn slow_rates_and_idle_periods() {
        let mut bucket = TokenBucket::new(0.5, 1.0, 0);
        assert!(bucket.try_take(0));
        assert_eq!(bucket.next_token_ms(0), 2_000);
        assert!(bucket.try_take(2_000));
        // A long idle period refills only up to the burst.
        assert!(bucket.try_take(1_000_000));
        assert!(!bucket.try_take(1_000_000));
        // A clock that goes back does not mint tokens, and counts on from there.
        assert!(!bucket.try_take(10));
        assert_eq!(bucket.next_token_ms(10), 2_010);
        assert!(bucket.try_take(2_010));
        assert!(!bucket.try_take(2_010));
    }
}
