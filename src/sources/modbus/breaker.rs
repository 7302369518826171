//! The per-device circuit breaker. A device that fails `threshold` polls in a row is
//! "open": its polls are passed up (and counted) so it stops eating the bus's time. After
//! a back-off it gets one probe poll; success closes the breaker, failure doubles the
//! back-off up to the cap. This is what keeps one dead unit on a serial line from
//! stealing a timeout from every sweep of its healthy neighbours.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open {
        until: Instant,
    },
    /// One probe is allowed.
    HalfOpen,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    min_backoff: Duration,
    max_backoff: Duration,
    backoff: Duration,
    consecutive_failures: u32,
    state: BreakerState,
}

/// What a poll result changed, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    Opened { backoff: Duration },
    Closed,
}

impl Breaker {
    pub fn new(threshold: u32, min_backoff: Duration, max_backoff: Duration) -> Self {
        let min_backoff = min_backoff.max(Duration::from_millis(1));
        Breaker {
            threshold: threshold.max(1),
            min_backoff,
            max_backoff: max_backoff.max(min_backoff),
            backoff: min_backoff,
            consecutive_failures: 0,
            state: BreakerState::Closed,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// May the device be polled at `now`?
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed | BreakerState::HalfOpen => true,
            BreakerState::Open { until } if now >= until => {
                self.state = BreakerState::HalfOpen;
                true
            }
            BreakerState::Open { .. } => false,
        }
    }

    pub fn success(&mut self) -> Transition {
        self.consecutive_failures = 0;
        self.backoff = self.min_backoff;
        match std::mem::replace(&mut self.state, BreakerState::Closed) {
            BreakerState::Closed => Transition::None,
            _ => Transition::Closed,
        }
    }

    pub fn failure(&mut self, now: Instant) -> Transition {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        match self.state {
            BreakerState::HalfOpen => {
                self.backoff = (self.backoff * 2).min(self.max_backoff);
                self.state = BreakerState::Open {
                    until: now + self.backoff,
                };
                Transition::None
            }
            BreakerState::Closed if self.consecutive_failures >= self.threshold => {
                self.backoff = self.min_backoff;
                self.state = BreakerState::Open {
                    until: now + self.backoff,
                };
                Transition::Opened {
                    backoff: self.backoff,
                }
            }
            _ => Transition::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_probes_and_backs_off() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut b = Breaker::new(3, s, 8 * s);
        assert_eq!(b.failure(t0), Transition::None);
        assert_eq!(b.failure(t0), Transition::None);
        assert_eq!(b.failure(t0), Transition::Opened { backoff: s });
        assert!(!b.allow(t0 + s / 2));
        assert!(b.allow(t0 + s), "a probe after the back-off");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.failure(t0 + s), Transition::None);
        assert_eq!(
            b.state(),
            BreakerState::Open { until: t0 + 3 * s },
            "back-off doubled"
        );
        assert!(b.allow(t0 + 3 * s));
        b.failure(t0 + 3 * s);
        assert!(b.allow(t0 + 7 * s));
        b.failure(t0 + 7 * s);
        assert!(b.allow(t0 + 15 * s), "capped at 8 s");
        assert_eq!(b.success(), Transition::Closed);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.failure(t0), Transition::None, "counting starts over");
    }
}
