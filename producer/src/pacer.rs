//! Pure pacing: given a start instant and a rate, the deadline of event `n`.
//!
//! Deadlines are absolute (`start + n / rate`), never "previous send + interval", so the rate
//! does not drift however late the loop wakes up; and the loop sends only what is due at each
//! wake-up (tokio timers have millisecond resolution), so there are no one-second bursts.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tokio::time::Instant;

/// Highest rate `--rate` accepts, events per second.
pub const MAX_RATE_PER_S: f64 = 10_000_000.0;

/// How fast to publish.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// As fast as the producer queue takes messages.
    Max,
    /// Events per second, more than 0 and at most [`MAX_RATE_PER_S`]; thousandths count.
    PerSecond(f64),
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Rate, String> {
        if text.eq_ignore_ascii_case("max") {
            return Ok(Rate::Max);
        }
        let rate: f64 = text
            .parse()
            .map_err(|_| format!("{text:?} is neither a number of events per second nor `max`"))?;
        if !(0.001..=MAX_RATE_PER_S).contains(&rate) {
            return Err(format!(
                "{text} events/s is outside 0.001 to {MAX_RATE_PER_S} (or use `max`)"
            ));
        }
        Ok(Rate::PerSecond(rate))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::Max => f.write_str("max"),
            Rate::PerSecond(rate) => write!(f, "{rate}/s"),
        }
    }
}

/// Deadlines of events at a fixed rate from an anchor.
///
/// Integer arithmetic on events per 1000 s, so `due(deadline(n))` is exactly `n + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacer {
    anchor: Instant,
    /// Number of the event due at `anchor`.
    first: u64,
    per_kilosecond: u128,
}

impl Pacer {
    /// Event 0 is due at `start`, event `n` at `start + n / rate_per_s`.
    pub fn new(start: Instant, rate_per_s: f64) -> Pacer {
        let per_kilosecond = (rate_per_s * 1_000.0).round().max(1.0) as u128;
        Pacer {
            anchor: start,
            first: 0,
            per_kilosecond,
        }
    }

    /// When event `n` is due.
    pub fn deadline(&self, n: u64) -> Instant {
        let ahead = u128::from(n.saturating_sub(self.first));
        // ceil(ahead * 1e12 / per_kilosecond) nanoseconds
        let nanos = (ahead * 1_000_000_000_000).div_ceil(self.per_kilosecond);
        self.anchor + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// How many events (counted from 0) are due at `now`: 1 + the last `n` with
    /// `deadline(n) <= now`.
    pub fn due(&self, now: Instant) -> u64 {
        let Some(elapsed) = now.checked_duration_since(self.anchor) else {
            return self.first;
        };
        let ahead = elapsed.as_nanos() * self.per_kilosecond / 1_000_000_000_000;
        self.first + u64::try_from(ahead).unwrap_or(u64::MAX - self.first) + 1
    }

    /// After a stall (broker or machine too slow), forget the backlog: event `n` is due at
    /// `now` and the rate goes on from there, instead of a catch-up burst.
    pub fn restart_at(&mut self, now: Instant, n: u64) {
        self.anchor = now;
        self.first = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates_and_names_what_is_wrong() {
        assert_eq!("max".parse(), Ok(Rate::Max));
        assert_eq!("MAX".parse(), Ok(Rate::Max));
        assert_eq!("100".parse(), Ok(Rate::PerSecond(100.0)));
        assert_eq!("2.5".parse(), Ok(Rate::PerSecond(2.5)));
        for bad in ["0", "-5", "fast", "", "1e9", "NaN", "inf"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn deadlines_are_evenly_spaced_from_the_start() {
        let start = Instant::now();
        let pacer = Pacer::new(start, 1_000.0);
        assert_eq!(pacer.deadline(0), start);
        assert_eq!(pacer.deadline(1), start + Duration::from_millis(1));
        assert_eq!(pacer.deadline(60_000), start + Duration::from_secs(60));
        let pacer = Pacer::new(start, 3.0);
        assert_eq!(pacer.deadline(3), start + Duration::from_secs(1));
        assert_eq!(pacer.deadline(1), start + Duration::from_nanos(333_333_334));
    }

    #[test]
    fn due_counts_exactly_the_events_whose_deadline_passed() {
        let start = Instant::now();
        for rate in [0.5, 3.0, 100.0, 7_777.7, 1_000_000.0] {
            let pacer = Pacer::new(start, rate);
            for n in [0, 1, 2, 999, 123_457] {
                let at = pacer.deadline(n);
                assert_eq!(
                    pacer.due(at),
                    n + 1,
                    "rate {rate}, event {n} at its deadline"
                );
                if at > start {
                    assert_eq!(
                        pacer.due(at - Duration::from_nanos(1)),
                        n,
                        "rate {rate}, just before event {n}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_minute_holds_rate_times_sixty_events() {
        let start = Instant::now();
        for rate in [100.0, 1_000.0, 10_000.0, 2.5] {
            let pacer = Pacer::new(start, rate);
            // Events due strictly within [start, start + 60 s).
            let due = pacer.due(start + Duration::from_secs(60) - Duration::from_nanos(1));
            assert_eq!(due as f64, rate * 60.0, "rate {rate}");
        }
    }

    #[test]
    fn restart_forgets_the_backlog() {
        let start = Instant::now();
        let mut pacer = Pacer::new(start, 10.0);
        let later = start + Duration::from_secs(100);
        assert_eq!(pacer.due(later), 1_001);
        pacer.restart_at(later, 5);
        assert_eq!(pacer.due(later), 6);
        assert_eq!(pacer.deadline(6), later + Duration::from_millis(100));
        assert_eq!(pacer.due(later + Duration::from_secs(1)), 16);
    }
}
