//! Prints every message of the window topic (offset, key, `revision` header, payload), then
//! exits at its end: `cargo run -p clickstream-windows --example read_topic -- BROKERS [TOPIC]`.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let brokers = args.next().unwrap_or_else(|| "localhost:9092".to_owned());
    let topic = args
        .next()
        .unwrap_or_else(|| "clickstream-metrics".to_owned());
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "clickstream-windows-read-topic")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()?;
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(&topic, 0, Offset::Beginning)?;
    consumer.assign(&list)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => {
                let revision = message
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == "revision"))
                    .and_then(|h| h.value)
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                println!(
                    "offset {} key {} revision {}\n{}",
                    message.offset(),
                    String::from_utf8_lossy(message.key().unwrap_or_default()),
                    revision,
                    String::from_utf8_lossy(message.payload().unwrap_or_default())
                );
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(error)) => return Err(error.into()),
            None => {}
        }
    }
    Ok(())
}
