//! End-to-end tests of the sink against the real broker and ClickHouse engine.

use std::time::Duration;

use crate::common::{Harness, event, messages, produce_on, spawn_sink, stops_with_error};
use chrono::Utc;
use clickstream_event::{Limits, RejectReason};
use clickstream_sink::{Delivery, Settings, SinkError};
use clickstream_testkit::{Broker, create_topic_on};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delivers_100k_events_exactly_once_and_a_restart_adds_nothing() {
    let h = Harness::new("it_e2e").await;
    h.produce(&messages(0..100_000)).await;

    let (stop, sink) = spawn_sink(h.settings());
    h.wait_rows(100_000, Duration::from_secs(180)).await;
    stop.cancel();
    sink.await.unwrap().expect("clean shutdown");
    h.assert_exactly_once(100_000).await;
    let batches = h.count("SELECT uniqExact(inserted_at) FROM events").await;
    assert!(
        batches < 1_000,
        "rows arrive in batches, not one by one: {batches} insert times"
    );

    // A restart replays from the committed offsets: nothing is added twice. Ten new events
    // after the restart prove the new sink caught up with everything before them.
    let (stop, sink) = spawn_sink(h.settings());
    h.produce(&messages(100_000..100_010)).await;
    h.wait_rows(100_010, Duration::from_secs(60)).await;
    stop.cancel();
    sink.await.unwrap().expect("clean shutdown");
    h.assert_exactly_once(100_010).await;
}

/// Every kind of bad input, with the reason the dead-letter topic must carry.
fn poison() -> Vec<(Vec<u8>, RejectReason)> {
    let valid = |i| event(i, Utc::now());
    let edit = |i, f: &dyn Fn(&mut serde_json::Value)| {
        let mut json: serde_json::Value =
            serde_json::from_slice(&valid(i).to_json()).expect("json");
        f(&mut json);
        json.to_string().into_bytes()
    };
    vec![
        (b"{not json".to_vec(), RejectReason::InvalidJson),
        (
            b"{\"user_id\": \"\xc3\x28\"}".to_vec(),
            RejectReason::InvalidUtf8,
        ),
        (Vec::new(), RejectReason::EmptyPayload),
        (
            edit(1, &|j| {
                drop(j.as_object_mut().expect("object").remove("session_id"))
            }),
            RejectReason::MissingField,
        ),
        (
            edit(2, &|j| j["duration_ms"] = "long".into()),
            RejectReason::WrongType,
        ),
        (
            edit(3, &|j| j["event_type"] = "teleport".into()),
            RejectReason::UnknownEventType,
        ),
        (
            edit(4, &|j| j["duration_ms"] = 999_999_999_u64.into()),
            RejectReason::OutOfRange,
        ),
        (
            edit(5, &|j| {
                j["timestamp"] = (Utc::now() + chrono::Duration::days(30))
                    .to_rfc3339()
                    .into()
            }),
            RejectReason::TimestampOutOfWindow,
        ),
        (
            vec![b' '; Limits::default().max_message_bytes + 1],
            RejectReason::Oversized,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_goes_to_the_dead_letter_topic_with_its_reason() {
    let h = Harness::new("it_dlq").await;
    let poison = poison();
    let mut batch = messages(0..300);
    for (n, (payload, _)) in poison.iter().enumerate() {
        batch.insert(n * 30 + 7, (format!("poison_{n}"), payload.clone()));
    }
    h.produce(&batch).await;

    let (stop, sink) = spawn_sink(h.settings());
    h.wait_rows(300, Duration::from_secs(120)).await;
    let letters = h.dead_letters(poison.len()).await;
    stop.cancel();
    sink.await.unwrap().expect("clean shutdown");
    h.assert_exactly_once(300).await;

    for (n, (payload, reason)) in poison.iter().enumerate() {
        let key = format!("poison_{n}");
        let letter = letters
            .iter()
            .find(|l| l.key.as_deref() == Some(key.as_bytes()))
            .unwrap_or_else(|| panic!("no dead letter for {reason}"));
        assert_eq!(letter.header("reason"), reason.as_str());
        assert_eq!(
            letter.payload.clone().unwrap_or_default(),
            *payload,
            "original payload kept"
        );
        assert_eq!(letter.header("source_topic"), h.topic);
        assert!(!letter.header("error").is_empty());
        letter
            .header("source_partition")
            .parse::<i32>()
            .expect("partition");
        letter
            .header("source_offset")
            .parse::<i64>()
            .expect("offset");
        letter.header("dead_lettered_at");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_the_engine_rejects_are_isolated_and_dead_lettered() {
    let h = Harness::new("it_reject").await;
    // A table constraint the decoder knows nothing about: prices from 10.00 on are refused.
    h.client
        .query("ALTER TABLE events ADD CONSTRAINT price_cap CHECK price IS NULL OR price < 10")
        .execute()
        .await
        .unwrap();
    let all = messages(0..2_000);
    let refused: Vec<String> = (0..2_000u64)
        .map(|i| event(i, Utc::now()))
        .filter(|e| e.price.is_some_and(|p| p.cents() >= 1_000))
        .map(|e| e.event_id.to_string())
        .collect();
    assert!(
        refused.len() >= 5,
        "the test needs some refused rows: {}",
        refused.len()
    );
    h.produce(&all).await;

    let (stop, sink) = spawn_sink(h.settings());
    let expected = 2_000 - refused.len() as u64;
    h.wait_rows(expected, Duration::from_secs(120)).await;
    let letters = h.dead_letters(refused.len()).await;
    stop.cancel();
    sink.await.unwrap().expect("clean shutdown");
    h.assert_exactly_once(expected).await;
    for letter in &letters {
        assert_eq!(letter.header("reason"), "rejected_by_clickhouse");
        assert!(
            letter.header("error").contains("469"),
            "{}",
            letter.header("error")
        );
        let event: serde_json::Value =
            serde_json::from_slice(letter.payload.as_deref().unwrap()).unwrap();
        assert!(refused.contains(&event["event_id"].as_str().unwrap().to_owned()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refuses_to_start_without_what_exactly_once_needs() {
    let h = Harness::new("it_refuse").await;
    h.client
        .query("ALTER TABLE events MODIFY SETTING non_replicated_deduplication_window = 0")
        .execute()
        .await
        .unwrap();
    let (_, sink) = spawn_sink(h.settings());
    let error = sink.await.unwrap().expect_err("must refuse");
    assert!(matches!(error, SinkError::ClickHouse { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("non_replicated_deduplication_window"),
        "{error}"
    );

    let mut at_least_once = h.settings();
    at_least_once.delivery = Delivery::AtLeastOnce;
    at_least_once.table = "no_such_table".into();
    let (_, sink) = spawn_sink(at_least_once);
    let error = sink.await.unwrap().expect_err("missing table");
    assert!(error.to_string().contains("does not exist"), "{error}");

    // The table of owed rollup rebuilds, written only after a refused insert: checked at start.
    h.client
        .query("DROP TABLE kafka_pending_rebuilds SYNC")
        .execute()
        .await
        .unwrap();
    let (_, sink) = spawn_sink(h.settings());
    let error = sink
        .await
        .unwrap()
        .expect_err("missing kafka_pending_rebuilds");
    let message = error.to_string();
    assert!(
        message.contains("kafka_pending_rebuilds does not exist")
            && message.contains("clickhouse/schema.sql"),
        "{message}"
    );
}

/// The topic was deleted and recreated (its offsets start again) but ClickHouse still holds the
/// old topic's rows: the sink must neither skip the new events as "already stored" nor write
/// them; it stops with a clear error and commits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reused_offsets_of_a_recreated_topic_stop_the_sink_instead_of_skipping() {
    let h = Harness::new("it_recreated").await;
    // The "old topic's" rows: offsets 0..50 of every partition, other events.
    h.client
        .query(&format!(
            "INSERT INTO events (event_id, event_time, user_id, session_id, event_type, page_url, \
             kafka_topic, kafka_partition, kafka_offset) \
             SELECT generateUUIDv4(), now64(3), 'user_0001', generateUUIDv4(), 'page_view', '/', \
             '{}', intDiv(number, 50), number % 50 FROM numbers(150)",
            h.topic
        ))
        .execute()
        .await
        .expect("seed the old rows");
    h.produce(&messages(0..300)).await;

    let (_stop, sink) = spawn_sink(h.settings());
    let error = stops_with_error(sink, Duration::from_secs(60), "the sink refuses to go on").await;
    let text = error.to_string();
    assert!(text.contains("recreated"), "{text}");
    assert!(text.contains(&h.topic), "{text}");
    assert!(
        text.contains("clickstream-sink replay --from 0:0"),
        "{text}"
    );
    assert_eq!(
        h.count("SELECT count() FROM events").await,
        150,
        "nothing written"
    );
    assert!(h.committed_offsets().is_empty(), "nothing committed");
}

/// A topic deleted and recreated (here: a fresh broker), whose old rows someone deleted by
/// hand: the new events at the old offsets go into inserts covering the same offset ranges.
/// ClickHouse still remembers the old inserts' deduplication tokens; had the tokens named
/// only offsets, it would drop the new inserts as duplicates, silently, and the sink would
/// commit them (measured: 35 of 40 events lost). Every new event must be stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recreated_topic_whose_old_rows_were_deleted_is_stored_whole() {
    let h = Harness::new("it_recreated_deleted").await;
    // The same keys (so the same partitions and offset ranges), other events.
    let keyed = |ids: std::ops::Range<u64>| -> Vec<(String, Vec<u8>)> {
        let now = Utc::now();
        (0..300)
            .zip(ids)
            .map(|(i, id)| (event(i, now).user_id, event(id, now).to_json()))
            .collect()
    };
    let run_once = |brokers: String, messages: Vec<(String, Vec<u8>)>| {
        let h = &h;
        async move {
            create_topic_on(&brokers, &h.topic, 3).await.unwrap();
            create_topic_on(&brokers, &h.dlq, 1).await.unwrap();
            produce_on(&brokers, &h.topic, &messages).await;
            let settings = Settings {
                brokers,
                // Every partition's rows in one flush, in one insert each: the same offset
                // ranges for the old and the new topic.
                flush_interval_ms: 3_000,
                partitions_per_insert: 1,
                ..h.settings()
            };
            h.sink_until(settings, 300).await;
        }
    };
    let old = Broker::start(&[]);
    run_once(old.brokers(), keyed(0..300)).await;
    drop(old);
    for table in ["events", "kafka_progress"] {
        h.client
            .query(&format!(
                "ALTER TABLE {table} DELETE WHERE kafka_topic = ? SETTINGS mutations_sync = 2"
            ))
            .bind(&h.topic)
            .execute()
            .await
            .unwrap();
    }
    assert_eq!(h.count("SELECT count() FROM events").await, 0);

    let new = Broker::start(&[]);
    run_once(new.brokers(), keyed(10_000..10_300)).await;
    let now = Utc::now();
    let (first_old, first_new) = (event(0, now).event_id, event(10_000, now).event_id);
    for (sql, want, what) in [
        (
            "SELECT count() FROM events".to_owned(),
            300,
            "every new event",
        ),
        (
            "SELECT uniqExact(event_id) FROM events".to_owned(),
            300,
            "each once",
        ),
        (
            format!("SELECT count() FROM events WHERE event_id = '{first_new}'"),
            1,
            "a new one",
        ),
        (
            format!("SELECT count() FROM events WHERE event_id = '{first_old}'"),
            0,
            "no old one",
        ),
    ] {
        assert_eq!(h.count(&sql).await, want, "{what}");
    }
}

/// Rows deleted by hand, then read again after a group reset: the inserts cover the same
/// offset ranges with the same events, so the same deduplication tokens, which ClickHouse
/// still remembers. It drops them and reports success; had the sink believed it, it would have
/// committed rows it never stored. Every row must be stored again, and counted once by the
/// rollups (which the delete left as they were).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_deleted_by_hand_and_read_again_after_a_group_reset_are_stored() {
    let h = Harness::new("it_deleted_reread").await;
    h.produce(&messages(0..300)).await;
    let run = |group: String| {
        h.sink_until(
            Settings {
                group,
                // Every partition's rows in one flush, in one insert each: the same offset
                // ranges in both runs.
                flush_interval_ms: 3_000,
                partitions_per_insert: 1,
                ..h.settings()
            },
            300,
        )
    };
    run(h.group.clone()).await;
    h.delete_all_rows_by_hand().await;
    assert_eq!(h.count("SELECT count() FROM events").await, 0);
    // A group reset: a new group reads the topic from its start.
    run(format!("{}_reset", h.group)).await;
    assert_eq!(h.count("SELECT count() FROM events").await, 300);
    assert_eq!(h.count("SELECT uniqExact(event_id) FROM events").await, 300);
    // The delete left the rollups counting the rows: their keys were rebuilt, so they count
    // each stored row once.
    h.assert_rollups_equal().await;
}

/// The progress table says how far ClickHouse held each partition, which tells a sink what it
/// reads again. A rebuild of its keys from rows read again so far (the newest deleted by hand,
/// not read again yet) keeps that maximum: lowered, a sink restarted meanwhile would insert the
/// rest unchecked, and ClickHouse would drop them as duplicates of their old inserts. Its row
/// count follows the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_of_the_progress_table_keeps_how_far_it_held_each_partition() {
    use clickstream_sink::writer::{ClickHouseWriter, Writer};
    let h = Harness::new("it_progress_floor").await;
    h.produce(&messages(0..300)).await;
    h.sink_until(h.settings(), 300).await;
    let max = "SELECT toUInt64(max(max_offset)) FROM kafka_progress WHERE kafka_partition = 0";
    let held = h.count(max).await as i64;
    assert!(held >= 10, "partition 0 holds {held}");
    h.client
        .query(
            "ALTER TABLE events DELETE WHERE kafka_partition = 0 AND kafka_offset > ? \
             SETTINGS mutations_sync = 2",
        )
        .bind(held / 2)
        .execute()
        .await
        .unwrap();

    let writer = ClickHouseWriter::new(&h.settings()).unwrap();
    let older: Vec<i64> = (0..=held / 2).collect();
    let mut keys = writer.touched_keys(&h.topic, 0, &older).await.unwrap();
    // As the sink marks the keys of rows read again: with how far ClickHouse held partition 0
    // when they were read (recorded, so the floor survives a stop before the rebuild).
    keys.progress_floor.insert(0, held);
    writer.note_rebuild(&h.topic, 0, 77, &keys).await.unwrap();
    let (ids, recorded) = writer.pending_rebuilds(&h.topic, &[0]).await.unwrap();
    assert_eq!(ids, [77]);
    assert_eq!(recorded.progress_floor.get(&0), Some(&held), "{recorded:?}");
    let keys = recorded;
    assert!(
        keys.rollups
            .iter()
            .any(|(r, k)| r.target == "kafka_progress" && !k.is_empty()),
        "{keys:?}"
    );
    writer.rebuild_rollups(&keys).await.unwrap();
    assert_eq!(
        h.count(max).await as i64,
        held,
        "how far it held partition 0"
    );
    assert_eq!(
        h.count("SELECT toUInt64(sum(rows)) FROM kafka_progress WHERE kafka_partition = 0")
            .await,
        h.count("SELECT count() FROM events WHERE kafka_partition = 0")
            .await,
        "rows as in the table"
    );
}

/// A view that refuses some rows (a user's own check, `throwIf`) runs after the table and
/// some rollups took the block: the rows the sink then writes again (the bisection's halves)
/// must not be counted twice by those rollups.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_view_refusing_rows_leaves_every_rollup_equal_to_the_table() {
    let h = Harness::new("it_view_refuses").await;
    clickstream_testkit::add_refusing_view(&h.client, &h.database, "ifNull(price, 0) >= 10")
        .await
        .unwrap();

    let all = messages(0..2_000);
    let refused = (0..2_000u64)
        .map(|i| event(i, Utc::now()))
        .filter(|e| e.price.is_some_and(|p| p.cents() >= 1_000))
        .count() as u64;
    assert!(refused >= 5, "the test needs some refused rows: {refused}");
    h.produce(&all).await;
    let (stop, sink) = spawn_sink(h.settings());
    h.wait_rows(2_000 - refused, Duration::from_secs(120)).await;
    let letters = h.dead_letters(refused as usize).await;
    stop.cancel();
    sink.await.unwrap().expect("clean shutdown");
    h.assert_exactly_once(2_000 - refused).await;
    assert!(letters.iter().all(
        |l| l.header("reason") == "rejected_by_clickhouse" && l.header("error").contains("395")
    ));
    h.assert_rollups_equal().await;
}

/// A rollup whose view's SELECT refuses rows the table already holds (here: a `throwIf` on the
/// older events, put in after they were written) cannot be rebuilt by trying again: once the
/// refusal has lasted `stall_timeout_ms` + `insert_timeout_ms` the sink that owes its keys
/// stops, saying which rollup and what to do; nothing of the flush is committed and the record
/// of those keys stays for its next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollup_whose_query_refuses_stored_rows_stops_the_rebuild_loudly() {
    use clickstream_sink::writer::{ClickHouseWriter, Writer};
    let h = Harness::new("it_rebuild_refused").await;
    let batch = |range: std::ops::Range<u64>, at| -> Vec<(String, Vec<u8>)> {
        range
            .map(|i| {
                let e = event(i, at);
                (e.user_id.clone(), e.to_json())
            })
            .collect()
    };
    let older = Utc::now() - chrono::Duration::seconds(10);
    h.produce(&batch(0..600, older)).await;
    let (stop, sink) = spawn_sink(h.settings());
    h.wait_rows(600, Duration::from_secs(120)).await;
    stop.cancel();
    sink.await.unwrap().expect("clean shutdown");
    let committed = h.committed_offsets();

    // Keys owed by a sink that stopped before rebuilding them (as after a refused insert).
    let writer = ClickHouseWriter::new(&h.settings()).expect("writer");
    let keys = writer
        .touched_keys(&h.topic, 0, &[0, 1])
        .await
        .expect("rollup keys");
    assert!(keys.keys() > 0, "{keys:?}");
    writer
        .note_rebuild(&h.topic, 0, 7, &keys)
        .await
        .expect("keys recorded");
    let (sessions, session_keys) = keys
        .rollups
        .iter()
        .find(|(rollup, _)| rollup.target == "sessions")
        .expect("the sessions rollup is touched");
    let sessions_of_keys = format!(
        "SELECT count() FROM sessions FINAL WHERE toString({}) IN {}",
        sessions.rebuild.as_ref().expect("declared").key,
        clickstream_sink::rollups::literal_set(session_keys)
    );
    let sessions_before = h.count(&sessions_of_keys).await;
    assert!(sessions_before > 0, "{sessions_of_keys}");
    // The sessions rollup's view, made again refusing every event written so far.
    let (view, create): (String, String) = h
        .client
        .query(
            "SELECT name, create_table_query FROM system.tables WHERE database = currentDatabase() \
             AND engine = 'MaterializedView' AND create_table_query LIKE '% TO %.sessions %'",
        )
        .fetch_one()
        .await
        .expect("the view feeding sessions");
    let source = format!("FROM {}.events", h.database);
    assert!(create.contains(&source), "{create}");
    let cutoff = older.format("%Y-%m-%d %H:%M:%S%.3f");
    let refusing = create.replacen(
        &source,
        &format!(
            "FROM (SELECT * FROM {}.events WHERE throwIf(event_time <= toDateTime64('{cutoff}', 3, 'UTC'), 'refused by the test') = 0)",
            h.database
        ),
        1,
    );
    h.client
        .query(&format!("DROP VIEW {view} SYNC"))
        .execute()
        .await
        .unwrap();
    h.client.query(&refusing).execute().await.unwrap();

    // Newer events (the view takes them): the sink's first write of partition 0 takes the
    // record over and rebuilds its keys, which reads the older events.
    h.produce(&batch(600..900, older + chrono::Duration::seconds(5)))
        .await;
    let mut settings = h.settings();
    settings.stall_timeout_ms = 1_000;
    settings.insert_timeout_ms = 3_000;
    let started = std::time::Instant::now();
    let (_stop, sink) = spawn_sink(settings);
    let error = stops_with_error(
        sink,
        Duration::from_secs(120),
        "a rebuild that cannot succeed is not retried without end",
    )
    .await;
    let text = error.to_string();
    assert!(text.contains("rollup sessions refuses rows"), "{text}");
    assert!(text.contains("kafka_pending_rebuilds"), "{text}");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "retried for stall_timeout_ms + insert_timeout_ms first: {:?}",
        started.elapsed()
    );
    assert_eq!(
        h.committed_offsets().get(&0),
        committed.get(&0),
        "nothing of partition 0 committed past the failed rebuild"
    );
    let (ids, _) = writer
        .pending_rebuilds(&h.topic, &[0])
        .await
        .expect("records");
    assert_eq!(ids, vec![7], "the keys stay owed for the next start");
    assert_eq!(
        h.count(&sessions_of_keys).await,
        sessions_before,
        "the refused rebuild deleted none of the rollup's rows of its keys"
    );
}

/// The views the table feeds are the engine's list (its `dependencies_*`): a view reading a
/// table named like it, or reading it only in a subquery, is not one; a view writing a table
/// other views write too, one writing into another database, one living in another database
/// and one without a TO table are named as not rebuilt, each with why.
#[tokio::test]
async fn the_views_the_table_feeds_come_from_the_engine() {
    let h = Harness::new("it_views_fed").await;
    let db = &h.database;
    let other = format!("{db}_other");
    let _drop_other = clickstream_testkit::DropDatabase {
        url: h.clickhouse_url.clone(),
        database: other.clone(),
    };
    let count = |name: &str, to: &str, from: &str| {
        format!("CREATE MATERIALIZED VIEW {name}{to} AS SELECT count() AS n FROM {from}")
    };
    for statement in [
        format!("CREATE DATABASE {other}"),
        format!("CREATE TABLE {db}.events_x (x UInt8) ENGINE = MergeTree ORDER BY x"),
        format!("CREATE TABLE {db}.mine (n UInt64) ENGINE = MergeTree ORDER BY n"),
        format!("CREATE TABLE {other}.pages_5m (n UInt64) ENGINE = MergeTree ORDER BY n"),
        count(
            &format!("{db}.mine_mv"),
            &format!(" TO {db}.mine"),
            &format!("{db}.events"),
        ),
        count(
            &format!("{db}.elsewhere_mv"),
            &format!(" TO {other}.pages_5m"),
            &format!("{db}.events"),
        ),
        format!("CREATE TABLE {db}.foreign (n UInt64) ENGINE = MergeTree ORDER BY n"),
        count(
            &format!("{other}.foreign_mv"),
            &format!(" TO {db}.foreign"),
            &format!("{db}.events"),
        ),
        count(
            &format!("{db}.inner_mv"),
            " ENGINE = MergeTree ORDER BY n",
            &format!("{db}.events"),
        ),
        count(
            &format!("{db}.x_mv"),
            &format!(" TO {db}.mine"),
            &format!("{db}.events_x"),
        ),
        count(
            &format!("{db}.sub_mv"),
            &format!(" TO {db}.mine"),
            &format!("{db}.events_x WHERE x IN (SELECT toUInt8(1) FROM {db}.events)"),
        ),
    ] {
        h.client
            .query(&statement)
            .execute()
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }

    let rollups = clickstream_sink::rollups::rollups(&h.client, db, "events")
        .await
        .unwrap();
    let mut declared: Vec<&str> = rollups
        .iter()
        .filter(|r| r.rebuild.is_some())
        .map(|r| r.target.as_str())
        .collect();
    declared.sort_unstable();
    assert_eq!(
        declared,
        [
            "events_1m",
            "funnel_5m",
            "kafka_progress",
            "pages_5m",
            "sessions",
            "users_daily"
        ]
    );
    let not_rebuilt: Vec<String> = rollups
        .iter()
        .filter(|r| r.rebuild.is_none())
        .map(|r| r.not_rebuilt())
        .collect();
    let expected = [
        "mine_mv (→ mine: ".to_owned(),
        format!("elsewhere_mv (→ {other}.pages_5m: {other} is another database"),
        "inner_mv (no TO table".to_owned(),
        format!("{other}.foreign_mv (→ foreign: {other} is another database"),
    ];
    assert_eq!(not_rebuilt.len(), expected.len(), "{not_rebuilt:#?}");
    for view in expected {
        assert!(
            not_rebuilt.iter().any(|n| n.starts_with(&view)),
            "{view}: {not_rebuilt:#?}"
        );
    }
    // `mine` is written by two views that do not read `events` too: rebuilding `mine_mv`'s
    // keys would delete their rows.
    let mine = not_rebuilt
        .iter()
        .find(|n| n.starts_with("mine_mv"))
        .unwrap();
    assert!(
        mine.contains("x_mv") && mine.contains("sub_mv") && mine.contains("also write(s) into it"),
        "{mine}"
    );
}
