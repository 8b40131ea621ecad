//! The pure part: window arithmetic, the message, and the [`Tracker`] that decides what to
//! publish (a window's first message, a correction, or nothing) from what the topic already
//! holds. No I/O, so every rule is unit-tested.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, DurationRound, Utc};
use serde::{Deserialize, Serialize};

/// One closed window, as published (the README's "Window results" lists the fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowMessage {
    /// RFC 3339, UTC; also the message key.
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    /// 1 for the first message of a window, then +1 for each correction.
    pub revision: u32,
    pub total_events: u64,
    pub unique_users: u64,
    pub unique_sessions: u64,
    /// Every event type of the window and its events.
    pub event_types: BTreeMap<String, u64>,
    /// Every device type of the window and its events.
    pub devices: BTreeMap<String, u64>,
    /// The `top_n` referrers by events (ties by name).
    pub top_referrers: BTreeMap<String, u64>,
    /// The `top_n` pages by page views (ties by URL).
    pub top_pages: BTreeMap<String, u64>,
    /// Mean `duration_ms` of the window's events, rounded to 0.001 ms; 0 without events.
    pub avg_duration_ms: f64,
}

impl WindowMessage {
    /// The Kafka key: the window start in RFC 3339.
    pub fn key(&self) -> String {
        rfc3339(self.window_start)
    }

    /// Whether the numbers (everything but the revision) are the same.
    pub fn same_numbers(&self, other: &WindowMessage) -> bool {
        WindowMessage {
            revision: other.revision,
            ..self.clone()
        } == *other
    }
}

pub fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Tumbling windows of `size`, aligned to the epoch, closed `lateness` after their end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    pub size: Duration,
    pub lateness: Duration,
}

impl Windows {
    pub fn start_of(&self, time: DateTime<Utc>) -> DateTime<Utc> {
        time.duration_trunc(self.size).unwrap_or(time)
    }

    /// The start of the newest window closed at `now`: its end plus the lateness has passed.
    pub fn last_closed(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        self.start_of(now - self.lateness) - self.size
    }

    pub fn is_closed(&self, start: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        start <= self.last_closed(now)
    }
}

/// What the topic holds and what is waiting: decides each window's next message.
///
/// Exactly once per window and revision: the tracker starts from the topic's own content
/// ([`Tracker::new`] with what was read back), publishes a window only when it has no message
/// yet or its numbers changed, and records a message only after Kafka acknowledged it.
#[derive(Debug, Clone)]
pub struct Tracker {
    windows: Windows,
    /// The newest message of each window, as the topic holds it.
    published: BTreeMap<DateTime<Utc>, WindowMessage>,
    /// Windows to look at once closed: new ones and those late rows touched.
    pending: BTreeSet<DateTime<Utc>>,
    /// Windows before this are never looked at (older than the topic's retention, or before
    /// the start).
    floor: DateTime<Utc>,
    /// The first window not yet added to `pending` as a new one.
    next_new: DateTime<Utc>,
}

impl Tracker {
    /// `read_back`: the topic's messages in offset order (a later revision replaces an
    /// earlier one). `since`: the first window to publish; without it, the first window the
    /// topic holds, or the newest closed one when the topic is empty.
    pub fn new(
        windows: Windows,
        read_back: impl IntoIterator<Item = WindowMessage>,
        since: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        retention: Duration,
    ) -> Tracker {
        let floor = windows.start_of(now - retention);
        let mut published: BTreeMap<DateTime<Utc>, WindowMessage> = BTreeMap::new();
        for message in read_back {
            let newer = published
                .get(&message.window_start)
                .is_none_or(|old| old.revision < message.revision);
            if newer {
                published.insert(message.window_start, message);
            }
        }
        let start = since
            .map(|t| windows.start_of(t))
            .or_else(|| published.keys().next().copied())
            .unwrap_or_else(|| windows.last_closed(now))
            .max(floor);
        Tracker {
            windows,
            published,
            pending: BTreeSet::new(),
            floor: start,
            next_new: start,
        }
    }

    pub fn windows(&self) -> Windows {
        self.windows
    }

    /// The oldest window it publishes or corrects: `since`'s (else the oldest on the topic,
    /// else the last closed one), but none older than the topic keeps.
    pub fn first(&self) -> DateTime<Utc> {
        self.floor
    }

    /// Windows that rows inserted lately fall into (late events): looked at again once closed.
    pub fn touched(&mut self, starts: impl IntoIterator<Item = DateTime<Utc>>) {
        let floor = self.floor;
        self.pending
            .extend(starts.into_iter().filter(|start| *start >= floor));
    }

    /// The closed windows to compute now: every window up to the newest closed one that was
    /// never looked at, and the closed ones late rows touched.
    pub fn due(&mut self, now: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let last = self.windows.last_closed(now);
        while self.next_new <= last {
            self.pending.insert(self.next_new);
            self.next_new += self.windows.size;
        }
        self.pending.range(..=last).copied().collect()
    }

    /// The message to publish for a window computed as `current` (its revision ignored):
    /// revision 1 if the topic has none, the next revision if the numbers changed, else none.
    pub fn decide(&self, current: &WindowMessage) -> Option<WindowMessage> {
        match self.published.get(&current.window_start) {
            None => Some(WindowMessage {
                revision: 1,
                ..current.clone()
            }),
            Some(old) if !old.same_numbers(current) => Some(WindowMessage {
                revision: old.revision + 1,
                ..current.clone()
            }),
            Some(_) => None,
        }
    }

    /// Kafka acknowledged `message` (or it needed none): the window is done until touched.
    pub fn record(&mut self, message: Option<WindowMessage>, start: DateTime<Utc>) {
        if let Some(message) = message {
            self.published.insert(message.window_start, message);
        }
        self.pending.remove(&start);
    }

    /// Forgets windows older than `retention` (the topic no longer holds them either).
    pub fn prune(&mut self, now: DateTime<Utc>, retention: Duration) {
        let floor = self.windows.start_of(now - retention);
        if floor > self.floor {
            self.floor = floor;
            self.published = self.published.split_off(&floor);
            self.pending = self.pending.split_off(&floor);
            self.next_new = self.next_new.max(floor);
        }
    }

    pub fn published(&self) -> &BTreeMap<DateTime<Utc>, WindowMessage> {
        &self.published
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    const FIVE: Windows = Windows {
        size: Duration::minutes(5),
        lateness: Duration::minutes(1),
    };

    fn message(start: &str, events: u64) -> WindowMessage {
        let start = at(start);
        WindowMessage {
            window_start: start,
            window_end: start + Duration::minutes(5),
            revision: 0,
            total_events: events,
            unique_users: 1,
            unique_sessions: 1,
            event_types: BTreeMap::from([("click".into(), events)]),
            devices: BTreeMap::new(),
            top_referrers: BTreeMap::new(),
            top_pages: BTreeMap::new(),
            avg_duration_ms: 12.5,
        }
    }

    #[test]
    fn a_window_closes_when_its_end_plus_the_lateness_has_passed() {
        let start = at("2026-11-30T10:00:00Z");
        assert!(!FIVE.is_closed(start, at("2026-11-30T10:05:59Z")));
        assert!(FIVE.is_closed(start, at("2026-11-30T10:06:00Z")));
        assert_eq!(FIVE.last_closed(at("2026-11-30T10:06:00Z")), start);
    }

    #[test]
    fn the_message_serializes_with_rfc3339_times_and_the_documented_fields() {
        let json = serde_json::to_value(message("2026-11-30T10:00:00Z", 3)).unwrap();
        assert_eq!(json["window_start"], "2026-11-30T10:00:00Z");
        assert_eq!(json["window_end"], "2026-11-30T10:05:00Z");
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "avg_duration_ms",
                "devices",
                "event_types",
                "revision",
                "top_pages",
                "top_referrers",
                "total_events",
                "unique_sessions",
                "unique_users",
                "window_end",
                "window_start"
            ]
        );
        assert_eq!(
            message("2026-11-30T10:00:00Z", 3).key(),
            "2026-11-30T10:00:00Z"
        );
    }

    #[test]
    fn first_message_then_nothing_then_one_correction_when_late_rows_change_the_numbers() {
        let now = at("2026-11-30T10:20:00Z");
        let mut tracker = Tracker::new(
            FIVE,
            [],
            Some(at("2026-11-30T10:00:00Z")),
            now,
            Duration::days(7),
        );
        let due = tracker.due(now);
        assert_eq!(
            due.len(),
            3,
            "10:00, 10:05, 10:10 are closed at 10:20 ({due:?})"
        );
        let first = tracker.decide(&message("2026-11-30T10:00:00Z", 5)).unwrap();
        assert_eq!(first.revision, 1);
        tracker.record(Some(first), due[0]);
        assert_eq!(
            tracker.decide(&message("2026-11-30T10:00:00Z", 5)),
            None,
            "no repeat"
        );
        tracker.touched([at("2026-11-30T10:00:00Z")]);
        assert!(tracker.due(now).contains(&at("2026-11-30T10:00:00Z")));
        let correction = tracker.decide(&message("2026-11-30T10:00:00Z", 6)).unwrap();
        assert_eq!(correction.revision, 2);
    }

    #[test]
    fn after_a_restart_the_read_back_topic_prevents_repeats() {
        let now = at("2026-11-30T10:20:00Z");
        let mut old = message("2026-11-30T10:00:00Z", 5);
        old.revision = 1;
        let mut newer = message("2026-11-30T10:00:00Z", 6);
        newer.revision = 2;
        let tracker = Tracker::new(FIVE, [old, newer.clone()], None, now, Duration::days(7));
        assert_eq!(tracker.decide(&newer), None);
        let mut tracker = tracker;
        // Without --since it starts at the topic's first window and looks at every later one.
        assert_eq!(tracker.due(now).first(), Some(&at("2026-11-30T10:00:00Z")));
        // An empty topic and no --since: the newest closed window.
        let mut empty = Tracker::new(FIVE, [], None, now, Duration::days(7));
        assert_eq!(empty.due(now), [at("2026-11-30T10:10:00Z")]);
    }

    #[test]
    fn windows_before_the_start_or_the_retention_are_ignored() {
        let now = at("2026-11-30T10:20:00Z");
        let mut tracker = Tracker::new(
            FIVE,
            [],
            Some(at("2026-11-30T10:10:00Z")),
            now,
            Duration::days(7),
        );
        tracker.touched([at("2026-11-30T09:00:00Z")]);
        assert_eq!(tracker.due(now), [at("2026-11-30T10:10:00Z")]);
        tracker.prune(at("2026-12-09T00:00:00Z"), Duration::days(7));
        assert!(tracker.published().is_empty());
    }

    #[test]
    fn a_since_older_than_the_retention_starts_at_the_oldest_window_kept() {
        let now = at("2026-11-30T10:22:00Z");
        let since = Some(at("2026-10-01T00:00:00Z"));
        let tracker = Tracker::new(FIVE, [], since, now, Duration::days(7));
        assert_eq!(tracker.first(), at("2026-11-23T10:20:00Z"));
        let tracker = Tracker::new(
            FIVE,
            [],
            Some(at("2026-11-30T09:07:00Z")),
            now,
            Duration::days(7),
        );
        assert_eq!(tracker.first(), at("2026-11-30T09:05:00Z"));
    }
}
