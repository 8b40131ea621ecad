//! Kafka smoke test through rdkafka: keyed produce, group consume, commit, reopen the group.

use std::collections::HashMap;
use std::time::Duration;

use clickstream_testkit::{create_topic, kafka_brokers, unique_name};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const MESSAGES: usize = 10_000;

fn group_consumer(group: &str) -> StreamConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .expect("consumer")
}

#[tokio::test]
async fn produce_consume_commit_and_read_committed_offsets() {
    let topic = unique_name("it_smoke");
    let group = unique_name("it_smoke_group");
    create_topic(&topic, 3).await;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let deliveries: Vec<_> = (0..MESSAGES)
        .map(|i| {
            let key = format!("user_{:04}", i % 500);
            let payload = format!("{{\"n\":{i}}}");
            producer
                .send_result(FutureRecord::to(&topic).key(&key).payload(&payload))
                .map_err(|(error, _)| error)
                .expect("enqueue")
        })
        .collect();
    for delivery in deliveries {
        delivery.await.expect("delivery future").expect("delivered");
    }

    let consumer = group_consumer(&group);
    consumer.subscribe(&[&topic]).expect("subscribe");
    let mut per_partition: HashMap<i32, (usize, i64)> = HashMap::new();
    let mut partition_of_key: HashMap<String, i32> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    while seen.len() < MESSAGES {
        let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {MESSAGES} messages within 60 s", seen.len()))
            .expect("consume");
        let key = String::from_utf8(message.key().expect("key").to_vec()).expect("utf-8 key");
        let partition = message.partition();
        assert_eq!(
            *partition_of_key.entry(key).or_insert(partition),
            partition,
            "a key stays on one partition"
        );
        let payload: serde_json::Value =
            serde_json::from_slice(message.payload().expect("payload")).expect("json");
        assert!(
            seen.insert(payload["n"].as_u64().expect("n")),
            "duplicate message"
        );
        let entry = per_partition.entry(partition).or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(message.offset());
    }
    assert_eq!(
        per_partition.len(),
        3,
        "keys spread over all 3 partitions: {per_partition:?}"
    );
    consumer
        .commit_consumer_state(CommitMode::Sync)
        .expect("commit");
    drop(consumer);

    let reopened = group_consumer(&group);
    let mut wanted = TopicPartitionList::new();
    for partition in 0..3 {
        wanted.add_partition(&topic, partition);
    }
    let committed = reopened
        .committed_offsets(wanted, Duration::from_secs(30))
        .expect("committed offsets");
    let mut total = 0;
    for element in committed.elements() {
        let (count, last) = per_partition[&element.partition()];
        assert_eq!(
            element.offset(),
            Offset::Offset(last + 1),
            "partition {}",
            element.partition()
        );
        total += count;
    }
    assert_eq!(total, MESSAGES);
}
