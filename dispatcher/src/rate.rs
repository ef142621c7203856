//! `sluice.dev/rate-limit`: a token bucket per consumer and partition, on the caller's clock.
//!
//! Pure: the caller passes `now_ms` and, when the bucket is empty, sleeps until [`TokenBucket::next_token_ms`].

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
        self.last_ms = self.last_ms.max(now_ms);
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
        now_ms + (missing * 1000.0 / self.per_second).ceil() as u64
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

    #[test]
    fn slow_rates_and_idle_periods() {
        let mut bucket = TokenBucket::new(0.5, 1.0, 0);
        assert!(bucket.try_take(0));
        assert_eq!(bucket.next_token_ms(0), 2_000);
        assert!(bucket.try_take(2_000));
        // A long idle period refills only up to the burst.
        assert!(bucket.try_take(1_000_000));
        assert!(!bucket.try_take(1_000_000));
        // A clock that goes back does not mint tokens.
        assert!(!bucket.try_take(10));
    }
}
