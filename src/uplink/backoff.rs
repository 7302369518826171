//! Capped exponential back-off with full jitter: the delay before attempt n is drawn
//! uniformly from [min, min(max, min·2ⁿ)], so a fleet of gateways that lost the same
//! backend does not come back in lock-step.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// `min` must be positive and not above `max` (validated in config).
    pub fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The upper bound of the next delay, before jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(31));
        self.min.saturating_mul(factor).min(self.max)
    }

    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let span = ceiling.saturating_sub(self.min);
        self.min + span.mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_stay_within_bounds() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        let mut b = Backoff::new(min, max);
        let mut ceilings = Vec::new();
        for _ in 0..20 {
            ceilings.push(b.ceiling());
            let d = b.next_delay();
            assert!(d >= min && d <= max, "{d:?}");
        }
        assert_eq!(ceilings[0], min);
        assert_eq!(ceilings[3], Duration::from_millis(800));
        assert_eq!(*ceilings.last().unwrap(), max);
        b.reset();
        assert_eq!(b.ceiling(), min);
    }

    #[test]
    fn delays_are_jittered() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_secs(10));
        for _ in 0..8 {
            b.next_delay();
        }
        let draws: std::collections::HashSet<Duration> =
            (0..20).map(|_| b.clone().next_delay()).collect();
        assert!(draws.len() > 10, "jitter should spread delays: {draws:?}");
    }
}
