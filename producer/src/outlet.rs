//! The seam between the publishing loop and Kafka: enqueue without blocking, count deliveries,
//! flush. [`crate::kafka::KafkaOutlet`] is the real one; tests use an in-memory one.

use std::collections::BTreeMap;
use std::time::Duration;

/// Why a message was not enqueued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// The producer's queue is full: try the same message again shortly.
    QueueFull,
    /// The message can never be sent (too large, unknown topic, fatal producer error): counted
    /// as a delivery failure.
    Rejected(String),
}

/// Delivery outcomes reported so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deliveries {
    /// Acknowledged by the broker.
    pub delivered: u64,
    /// Failed for good (after the producer's own retries).
    pub failed: u64,
    /// Delivered messages per partition.
    pub per_partition: BTreeMap<i32, u64>,
}

/// Where generated messages go.
pub trait Outlet {
    /// Enqueues one message; never blocks.
    fn try_send(&self, key: &str, payload: &[u8]) -> Result<(), SendError>;

    /// Delivery outcomes so far.
    fn deliveries(&self) -> Deliveries;

    /// Waits up to `timeout` for outstanding deliveries; returns how many are still in flight.
    fn flush(&self, timeout: Duration) -> u64;
}
