//! Measures the rate of a topic from the broker's side (run by `bench/producer.sh`): consumes
//! every message with a fresh consumer group and uses the message timestamps (CreateTime, set
//! by the producer at send) to report the achieved rate and its smoothness. Prints one JSON line.
//!
//! Usage: rate_check BROKERS TOPIC EXPECTED_MESSAGES TARGET_RATE_PER_S

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, brokers, topic, expected, target] = &args[..] else {
        bail!("usage: rate_check BROKERS TOPIC EXPECTED_MESSAGES TARGET_RATE_PER_S");
    };
    let expected: usize = expected.parse().context("EXPECTED_MESSAGES")?;
    let target: f64 = target.parse().context("TARGET_RATE_PER_S")?;

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("rate-check-{topic}"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("enable.partition.eof", "true")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut stamps: Vec<i64> = Vec::with_capacity(expected);
    let mut at_end = std::collections::HashSet::new();
    let mut partitions = std::collections::HashSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    while !(stamps.len() >= expected && !partitions.is_empty() && at_end == partitions) {
        if std::time::Instant::now() > deadline {
            bail!("only {} of {expected} messages in 10 minutes", stamps.len());
        }
        match consumer.poll(Duration::from_millis(500)) {
            None => {}
            Some(Ok(message)) => {
                partitions.insert(message.partition());
                at_end.remove(&message.partition());
                stamps.push(
                    message
                        .timestamp()
                        .to_millis()
                        .context("message without timestamp")?,
                );
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                partitions.insert(partition);
                at_end.insert(partition);
            }
            Some(Err(error)) => return Err(error.into()),
        }
    }
    stamps.sort_unstable();
    let (first, last) = (stamps[0], stamps[stamps.len() - 1]);
    let span_s = (last - first) as f64 / 1_000.0;
    let rate = if span_s > 0.0 {
        (stamps.len() - 1) as f64 / span_s
    } else {
        0.0
    };
    // Counts per whole second and per 100 ms from the first message (the last partial window of
    // each size is left out).
    let windows = |width_ms: i64| {
        let mut counts: BTreeMap<i64, u64> = BTreeMap::new();
        for stamp in &stamps {
            *counts.entry((stamp - first) / width_ms).or_default() += 1;
        }
        let full = (last - first) / width_ms; // index of the partial last window
        let values: Vec<u64> = (0..full)
            .map(|w| counts.get(&w).copied().unwrap_or(0))
            .collect();
        (
            values.iter().min().copied().unwrap_or(0),
            values.iter().max().copied().unwrap_or(0),
        )
    };
    let (min_per_s, max_per_s) = windows(1_000);
    let (min_per_100ms, max_per_100ms) = windows(100);
    println!(
        "{{\"target_per_s\":{target},\"messages\":{},\"span_s\":{span_s:.3},\
         \"measured_per_s\":{rate:.2},\"error_pct\":{:.3},\"min_per_s\":{min_per_s},\
         \"max_per_s\":{max_per_s},\"min_per_100ms\":{min_per_100ms},\
         \"max_per_100ms\":{max_per_100ms}}}",
        stamps.len(),
        (rate - target) / target * 100.0
    );
    Ok(())
}
