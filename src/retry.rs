//! The one retry policy: capped exponential backoff with full jitter that never gives up
//! (a transient failure must never drop work). Every stage retries through `Backoff`.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Delays for successive retries of one failing operation.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    delays: ExponentialBackoff,
}

impl Backoff {
    /// Exponential from `min`, capped at `max`, jittered.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            delays: Self::build(min, max),
        }
    }

    fn build(min: Duration, max: Duration) -> ExponentialBackoff {
        ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.max)
    }

    /// Start again from the shortest delay (after a success).
    pub fn reset(&mut self) {
        self.delays = Self::build(self.min, self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_within_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..50 {
            assert!(
                b.next_delay() <= Duration::from_secs(2),
                "jitter adds at most one delay"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(200));
    }
}
