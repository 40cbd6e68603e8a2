//! The idle timeout as a value: a half that heard nothing from its peer and moved no data for
//! its limit gives up. The time is passed in (the shell's clock, or the simulator's).

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Idle {
    limit: Option<Duration>,
    last_heard: Instant,
    last_moved: u64,
}

impl Idle {
    /// `moved`: the session's count of bytes moved so far (progress counts as hearing).
    pub fn new(limit: Option<Duration>, now: Instant, moved: u64) -> Self {
        Idle { limit, last_heard: now, last_moved: moved }
    }

    /// A message from the peer arrived.
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = now;
    }

    /// `Some(limit in seconds)` once nothing was heard and nothing moved for the whole limit.
    pub fn expired(&mut self, now: Instant, moved: u64) -> Option<u64> {
        if moved != self.last_moved {
            self.last_moved = moved;
            self.last_heard = now;
        }
        let limit = self.limit?;
        (now.saturating_duration_since(self.last_heard) >= limit).then_some(limit.as_secs())
    }

    /// When the limit runs out if nothing happens meanwhile.
    pub fn deadline(&self) -> Option<Instant> {
        self.limit.map(|l| self.last_heard + l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_and_messages_reset_it() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut idle = Idle::new(Some(10 * s), t0, 0);
        assert_eq!(idle.expired(t0 + 9 * s, 0), None);
        assert_eq!(idle.expired(t0 + 10 * s, 5), None, "bytes moved");
        assert_eq!(idle.expired(t0 + 19 * s, 5), None);
        assert_eq!(idle.expired(t0 + 20 * s, 5), Some(10));
        idle.heard(t0 + 20 * s);
        assert_eq!(idle.deadline(), Some(t0 + 30 * s));
        assert_eq!(Idle::new(None, t0, 0).expired(t0 + 1000 * s, 0), None);
    }
}
