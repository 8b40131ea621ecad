//! `bench-consume`: the consume-only upper bound of the sink, run by `scripts/bench`.
//!
//! Reads a topic with a fresh consumer group until it has seen `--count` messages, touching only
//! the payload length: no decode, no batching, no insert, no commit. The consumer gets the same
//! settings as the sink's (`sink/src/pipeline.rs` `consumer_config`, plus the `-X` passthrough), so
//! the difference between its rate and the sink's is the cost of everything after the fetch.
//!
//! Prints one JSON line: messages, payload bytes, time to the first message (group join and
//! first fetch), time to the last, and the steady rate between the two.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use clickstream_sink::consumer::CONSUMER_DEFAULTS;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};

/// Consumes COUNT messages of a topic as fast as possible and prints the rate as JSON.
#[derive(Debug, Parser)]
#[command(name = "bench-consume", version)]
struct Args {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS")]
    brokers: String,
    #[arg(long)]
    topic: String,
    /// Consumer group; use a fresh one so the topic is read from the start.
    #[arg(long)]
    group: String,
    /// Stop after this many messages.
    #[arg(long)]
    count: u64,
    /// Consumer API: `stream` (async `recv`, as the sink uses) or `base` (a plain poll loop).
    #[arg(long, value_enum, default_value = "stream")]
    api: Api,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    /// librdkafka property, repeatable (as the sink's -X).
    #[arg(short = 'X', value_name = "KEY=VALUE")]
    kafka: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Api {
    Stream,
    Base,
}

/// What was read, and when (seconds from the start of the program).
#[derive(Debug, Default)]
struct Tally {
    messages: u64,
    bytes: u64,
    first_s: Option<f64>,
    last_s: f64,
}

impl Tally {
    fn add(&mut self, payload_len: usize, started: Instant) {
        self.messages += 1;
        self.bytes += payload_len as u64;
        if self.first_s.is_none() {
            self.first_s = Some(started.elapsed().as_secs_f64());
        }
    }
}

/// The sink's consumer settings (`consumer_config` in sink/src/pipeline.rs, with its
/// [`CONSUMER_DEFAULTS`]), then `-X`.
fn consumer_config(args: &Args) -> anyhow::Result<ClientConfig> {
    let mut config = ClientConfig::new();
    for (key, value) in CONSUMER_DEFAULTS {
        config.set(*key, *value);
    }
    config
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", &args.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    for pair in &args.kafka {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("-X {pair}: expected KEY=VALUE"))?;
        config.set(key, value);
    }
    Ok(config)
}

fn consume_base(args: &Args, started: Instant, deadline: Instant) -> anyhow::Result<Tally> {
    let consumer: BaseConsumer = consumer_config(args)?.create()?;
    consumer.subscribe(&[&args.topic])?;
    let mut tally = Tally::default();
    while tally.messages < args.count {
        if Instant::now() > deadline {
            bail!(
                "only {} of {} messages before the timeout",
                tally.messages,
                args.count
            );
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(message) => {
                let message = message?;
                tally.add(message.payload_len(), started);
            }
        }
    }
    tally.last_s = started.elapsed().as_secs_f64();
    Ok(tally)
}

async fn consume_stream(args: &Args, started: Instant, deadline: Instant) -> anyhow::Result<Tally> {
    let consumer: StreamConsumer = consumer_config(args)?.create()?;
    consumer.subscribe(&[&args.topic])?;
    let mut tally = Tally::default();
    while tally.messages < args.count {
        let message = tokio::time::timeout_at(deadline.into(), consumer.recv())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "only {} of {} messages before the timeout",
                    tally.messages,
                    args.count
                )
            })??;
        tally.add(message.payload_len(), started);
    }
    tally.last_s = started.elapsed().as_secs_f64();
    Ok(tally)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout_s);
    let tally = match args.api {
        Api::Base => consume_base(&args, started, deadline)?,
        Api::Stream => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(consume_stream(&args, started, deadline))?,
    };
    let first_s = tally.first_s.unwrap_or(tally.last_s);
    let steady_s = tally.last_s - first_s;
    // The first message is the start of the steady phase: it and the rest are counted after it.
    let steady_per_s = if steady_s > 0.0 {
        (tally.messages.saturating_sub(1)) as f64 / steady_s
    } else {
        0.0
    };
    let summary = serde_json::json!({
        "api": format!("{:?}", args.api).to_lowercase(),
        "messages": tally.messages,
        "payload_bytes": tally.bytes,
        "first_message_s": round3(first_s),
        "elapsed_s": round3(tally.last_s),
        "events_per_s": (tally.messages as f64 / tally.last_s).round(),
        "steady_events_per_s": steady_per_s.round(),
        "steady_mb_per_s": round3(tally.bytes as f64 / 1e6 * steady_per_s / tally.messages.max(1) as f64),
    });
    println!("{summary}");
    Ok(())
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}
