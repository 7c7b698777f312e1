//! The data channel's pace: a token bucket for stream-data messages, sans-IO.

use std::time::Duration;

use tokio::time::Instant;

/// Token bucket for stream-data messages: `rate` per second with bursts of a twentieth of a
/// second (so an interactive round trip never waits). Sans-IO: the caller passes `now`.
/// Forced sends (handshake, flags) may overdraw it; later sends then wait the debt off.
#[derive(Debug)]
pub(super) struct Pacer {
    /// Messages per second; 0 = unpaced.
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Pacer {
    pub(super) fn new(rate: u32, now: Instant) -> Self {
        let rate = f64::from(rate);
        // A twentieth of a second: plenty for a query's round trip, and a full bucket plus a
        // second at `rate` stays 5% under the limit `rate` is chosen against.
        let burst = (rate / 20.0).max(1.0);
        Pacer {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// Messages that may go out now.
    pub(super) fn available(&mut self, now: Instant) -> usize {
        if self.rate == 0.0 {
            return usize::MAX;
        }
        self.refill(now);
        if self.tokens < 1.0 {
            0
        } else {
            self.tokens as usize
        }
    }

    /// Spends one token (possibly into debt).
    pub(super) fn take(&mut self, now: Instant) {
        if self.rate > 0.0 {
            self.refill(now);
            self.tokens -= 1.0;
        }
    }

    /// When to look again if no token is there now: once a few have accrued (timers have
    /// millisecond granularity, so waiting for exactly one could wake a hair too early, again
    /// and again), plus a millisecond of margin.
    pub(super) fn next_at(&mut self, now: Instant) -> Instant {
        if self.rate == 0.0 {
            return now;
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            return now;
        }
        let want = self.burst.min(4.0);
        now + Duration::from_secs_f64((want - self.tokens) / self.rate) + Duration::from_millis(1)
    }
}
