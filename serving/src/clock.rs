//! The clock serving times durations on: milliseconds since this process first read it, from [`Instant`],
//! which never goes backwards.
//!
//! The wall clock (`sluice_cloudevent::clock::now_ms`) can be stepped either way (NTP, a person, a VM
//! resumed). Stepped back, the autoscaler's windows would stop moving (the average frozen at its last value);
//! stepped forward, they would empty at once and the panic clock, `scale-down-delay`, the idle timer and the
//! restart backoff would all read as long passed. So the revision tasks' inputs (the gate's meter, samples,
//! observations, restart backoff) and the backlog reports' expiry run on this clock. Its values mean nothing
//! outside this process: nothing stamped with it is persisted, sent to another node or shown to people; those
//! keep the wall clock (a decision's `at_ms`, garbage collection's ages).

use std::sync::LazyLock;
use std::time::Instant;

static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds on the monotonic clock.
pub(crate) fn monotonic_ms() -> u64 {
    u64::try_from(ORIGIN.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_monotonic_clock_never_goes_back_and_is_not_the_wall_clock() {
        let readings: Vec<u64> = (0..10_000).map(|_| monotonic_ms()).collect();
        assert!(readings.windows(2).all(|pair| pair[0] <= pair[1]), "never backwards");
        // Counted from this process's first reading, not from 1970 (a wall-clock reading is about 1.7e12).
        let wall = sluice_cloudevent::clock::now_ms();
        assert!(readings[0] < wall / 2, "{} is not a monotonic reading (wall {wall})", readings[0]);
    }
}
