//! The operations commands against the real broker and engine: `verify` finds what is wrong
//! (and only that), `replay` re-inserts a range exactly once even when it is killed between
//! its steps, `dlq replay` inserts letters valid now exactly once.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use chrono::Utc;
use clickstream_sink::ops::kafka::OpsKafka;
use clickstream_sink::ops::replay::{Refusal, ReplayError};
use clickstream_sink::ops::{dlq, lease, verify};
use tokio_util::sync::CancellationToken;

use crate::common::{Harness, event, messages, spawn_sink};

/// Runs `clickstream-sink <args>` with the harness's settings.
fn sink_command(h: &Harness, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_clickstream-sink"));
    command.args(args).envs(h.env());
    for (k, v) in extra_env {
        command.env(k, v);
    }
    command.output().expect("run clickstream-sink")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs the sink until the table holds `rows`, then stops it (committing).
async fn drain(h: &Harness, rows: u64) {
    let (stop, sink) = spawn_sink(h.settings());
    h.wait_rows(rows, Duration::from_secs(120)).await;
    stop.cancel();
    sink.await.expect("sink task").expect("clean shutdown");
}

/// Waits until the group has no member (a stopped sink leaves at once; a killed one after
/// its session timeout).
async fn wait_group_empty(h: &Harness) {
    let kafka = OpsKafka::new(&h.settings()).expect("ops consumer");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !kafka.members().expect("members").is_empty() {
        assert!(Instant::now() < deadline, "the group still has members");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_reports_missing_twice_both_and_a_differing_rollup() {
    let h = Harness::new("it_verify").await;
    let mut batch = messages(0..600);
    batch.insert(100, ("poison".into(), b"{not json".to_vec()));
    h.produce(&batch).await;
    drain(&h, 600).await;
    let letter = h.dead_letters(1).await.remove(0);
    let (letter_partition, letter_offset): (i32, i64) = (
        letter.header("source_partition").parse().unwrap(),
        letter.header("source_offset").parse().unwrap(),
    );

    let settings = h.settings();
    let report = verify::verify(&settings, None).await.expect("verify");
    assert!(report.ok(), "a clean run verifies clean:\n{report}");
    let stored: u64 = report.partitions.iter().map(|p| p.stored).sum();
    let lettered: u64 = report.partitions.iter().map(|p| p.dead_lettered).sum();
    assert_eq!((stored, lettered), (600, 1), "{report}");
    assert_eq!(report.partitions[0].partition, 0);
    for p in &report.partitions {
        assert_eq!(p.committed, Some(p.latest), "all committed: {report}");
        assert_eq!(p.in_flight, 0);
    }
    assert!(report.rollups.iter().all(verify::RollupReport::equal));

    // As a running sink leaves it: rows written but not committed yet, and messages not read
    // yet. Both are "in flight", not missing.
    let written = report.partitions[0].latest;
    OpsKafka::new(&settings)
        .unwrap()
        .commit(&h.topic, &[(0, 50)].into())
        .unwrap();
    h.produce(&messages(600..630)).await;
    let report = verify::verify(&settings, None).await.expect("verify");
    assert!(report.ok(), "in flight is not a problem:\n{report}");
    assert_eq!(report.partitions[0].committed, Some(50));
    assert_eq!(
        report.partitions[0].stored_uncommitted as i64,
        written - 50,
        "{report}"
    );
    let unread: u64 = report.partitions.iter().map(|p| p.in_flight).sum();
    assert_eq!(unread, 30, "{report}");
    drain(&h, 630).await;

    // Damage it as an operator's mistake or a bug would: rows gone, a row twice, a row at a
    // dead-lettered offset.
    let sql = |s: String| {
        let client = h.client.clone();
        async move {
            client
                .query(&s)
                .with_setting("insert_deduplicate", "0")
                .with_setting("mutations_sync", "2")
                .execute()
                .await
                .unwrap_or_else(|e| panic!("{s}: {e}"))
        }
    };
    sql(
        "ALTER TABLE events DELETE WHERE kafka_partition = 0 AND kafka_offset BETWEEN 10 AND 19"
            .into(),
    )
    .await;
    sql(
        "INSERT INTO events SELECT * FROM events WHERE kafka_partition = 1 AND kafka_offset = 5"
            .into(),
    )
    .await;
    let donor = if letter_partition == 2 { 1 } else { 2 };
    sql(format!(
        "INSERT INTO events SELECT * REPLACE ({letter_partition} AS kafka_partition, {letter_offset} AS kafka_offset) \
         FROM (SELECT * FROM events WHERE kafka_partition = {donor} AND kafka_offset = 7)"
    ))
    .await;

    let report = verify::verify(&settings, None).await.expect("verify");
    assert!(!report.ok());
    let part = |n: i32| report.partitions.iter().find(|p| p.partition == n).unwrap();
    assert_eq!(part(0).missing, vec![(10, 19)], "{report}");
    assert_eq!(part(0).missing_count, 10);
    assert_eq!(part(1).stored_twice, vec![(5, 2)], "{report}");
    assert_eq!(
        part(letter_partition).stored_and_dead_lettered,
        vec![(letter_offset, letter_offset)],
        "{report}"
    );
    // The deleted rows are still in the rollups (a DELETE does not reach them).
    let events_1m = report
        .rollups
        .iter()
        .find(|r| r.rollup == "events_1m")
        .unwrap();
    assert!(!events_1m.equal(), "{report}");
    assert_eq!(events_1m.rollup_total - events_1m.raw_total, 10);
    assert_eq!(
        report.problems.len(),
        3 + report.rollups.iter().filter(|r| !r.equal()).count()
    );

    // The command: exit 1, the same findings as JSON.
    let out = sink_command(&h, &["verify", "--json"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(
        json["partitions"][0]["missing"],
        serde_json::json!([[10, 19]])
    );
    assert!(json["problems"].as_array().unwrap().len() >= 3);
    // Bad usage: exit 2.
    let out = sink_command(&h, &["verify", "--since", "yesterday-ish"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

/// Two things a healthy table does that are not differences: `--since` in the middle of a
/// window (the window is taken whole or not at all, on both sides), and a backfill of events
/// past the raw table's TTL (90 days: dropped at once) that the rollups (400 days) count, in
/// the rollup checks and in the offsets. A recent window the rollup lost stays a difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_since_mid_window_and_raw_rows_expired_by_the_ttl_are_not_differences() {
    let h = Harness::new("it_verify_windows").await;
    let now = Utc::now();
    let base = now - chrono::Duration::minutes(40);
    let base = base - chrono::Duration::seconds(base.timestamp() % 300);
    // 300 events 2 s apart from a 5-minute boundary (10 minutes), and 60 from 120 days ago.
    let mut batch: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| event(i, base + chrono::Duration::seconds(2 * i as i64)))
        .chain((300..360).map(|i| event(i, now - chrono::Duration::days(120))))
        .map(|e| (e.user_id.clone(), e.to_json()))
        .collect();
    batch.sort_by_key(|(key, _)| key.clone());
    h.produce(&batch).await;
    // A backfill: the sink accepts events up to 200 days old (7 by default).
    let settings = clickstream_sink::Settings {
        max_event_age_s: 200 * 86_400,
        ..h.settings()
    };
    // The raw table drops the 60 old events at once (past its 90-day TTL), the rollups count
    // them (400 days).
    let (stop, sink) = spawn_sink(settings.clone());
    h.wait_count(
        "SELECT toUInt64(sum(events)) FROM events_1m WHERE dimension = 'all'",
        360,
        Duration::from_secs(120),
    )
    .await;
    h.wait_rows(300, Duration::from_secs(10)).await;
    stop.cancel();
    sink.await.expect("sink task").expect("clean shutdown");
    assert_eq!(h.count("SELECT count() FROM events").await, 300);

    let all_equal =
        |rollups: &[verify::RollupReport]| rollups.iter().all(verify::RollupReport::equal);
    let since = base + chrono::Duration::seconds(2 * 60 + 30);
    let rollups = verify::check_rollups(&h.client, &h.database, "events", Some(since))
        .await
        .unwrap();
    assert!(all_equal(&rollups), "since mid-window: {rollups:?}");
    let events_1m = &rollups[0];
    assert_eq!(
        events_1m.raw_total,
        300 - (3 * 60) / 2,
        "whole minutes from 3 on: {rollups:?}"
    );

    let rollups = verify::check_rollups(&h.client, &h.database, "events", None)
        .await
        .unwrap();
    assert!(all_equal(&rollups), "past the TTL: {rollups:?}");
    // (A session wholly past the TTL is not compared: only sessions the raw table has are.)
    for name in ["events_1m", "pages_5m", "users_daily", "kafka_progress"] {
        assert!(
            rollups
                .iter()
                .any(|r| r.rollup == name && r.expired_keys > 0),
            "{name} has expired keys: {rollups:?}"
        );
    }
    // And the offsets of the deleted rows are not missing: their events are past the TTL.
    let report = verify::verify(&settings, None).await.expect("verify");
    assert!(report.ok(), "{report}");
    let expired: u64 = report.partitions.iter().map(|p| p.expired).sum();
    assert_eq!(expired, 60, "{report}");
    assert!(
        report.to_string().contains("whose raw rows expired"),
        "{report}"
    );
    // A group that committed nothing checked nothing: a problem, not an OK (a mistyped group).
    let wrong_group = clickstream_sink::Settings {
        group: format!("{}-typo", settings.group),
        ..settings.clone()
    };
    let report = verify::verify(&wrong_group, None).await.expect("verify");
    assert!(
        !report.ok()
            && report
                .problems
                .iter()
                .any(|p| p.contains("has committed no offset")),
        "{report}"
    );
    // `replay` without a range finishes one that stopped part-way; with none, it says so.
    let out = sink_command(&h, &["replay", "--yes"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("none to finish"),
        "{}",
        text(&out.stderr)
    );
    // A recent window the rollup lost is still a difference.
    h.client
        .query("ALTER TABLE events_1m DELETE WHERE window_start = toDateTime(?, 'UTC')")
        .bind(base.timestamp())
        .with_setting("mutations_sync", "2")
        .execute()
        .await
        .expect("delete a recent window of the rollup");
    let rollups = verify::check_rollups(&h.client, &h.database, "events", None)
        .await
        .unwrap();
    assert!(rollups[0].differing_keys > 0, "{rollups:?}");
}

/// The dead-letter topic written to all the time (a flood of poison) never goes quiet: the
/// commands that read it (`verify`, `dlq inspect`, `dlq replay`) read what was there when
/// they started and return (they read on for ever before).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reading_the_dead_letters_ends_while_letters_keep_coming() {
    let h = Harness::new("it_dlq_flood").await;
    let letter = |i: u64| ("k".to_owned(), format!("letter {i}").into_bytes());
    crate::common::produce_on(
        &clickstream_testkit::kafka_brokers(),
        &h.dlq,
        &[letter(0), letter(1)],
    )
    .await;
    let flooding = CancellationToken::new();
    // One letter after the other, each as soon as the last is delivered (a few ms apart): the
    // read's poll never waits 100 ms for nothing.
    let flood = {
        let (dlq, flooding) = (h.dlq.clone(), flooding.clone());
        tokio::spawn(async move {
            let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", clickstream_testkit::kafka_brokers())
                .set("linger.ms", "1")
                .create()
                .expect("producer");
            let mut i = 2;
            while !flooding.is_cancelled() {
                let (key, payload) = letter(i);
                producer
                    .send(
                        rdkafka::producer::FutureRecord::to(&dlq)
                            .key(&key)
                            .payload(&payload),
                        Duration::from_secs(10),
                    )
                    .await
                    .expect("letter delivered");
                i += 1;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settings = h.settings();
    let dlq_topic = h.dlq.clone();
    let read = tokio::task::spawn_blocking(move || {
        let kafka = OpsKafka::new(&settings).expect("ops consumer");
        dlq::read_letters(&kafka, &dlq_topic)
    });
    // A bound against a hang, not a measurement: the read itself ends by the messages stamped
    // after it started (ten seconds of margin).
    let letters = tokio::time::timeout(Duration::from_secs(90), read)
        .await
        .expect("the read of a dead-letter topic written to all the time ended")
        .expect("read task")
        .expect("read the letters");
    flooding.cancel();
    flood.await.unwrap();
    assert!(
        letters.len() >= 2,
        "the letters written before: {}",
        letters.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_reinserts_a_range_exactly_once_even_when_killed_between_steps() {
    let h = Harness::new("it_replay").await;
    h.produce(&messages(0..900)).await;
    drain(&h, 900).await;

    // While a sink of the group runs, replay refuses and changes nothing.
    let (stop, sink) = spawn_sink(h.settings());
    let kafka = OpsKafka::new(&h.settings()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    // (Until the sink's join completed: leaving in the middle of a join confuses the test
    // broker's group.)
    while kafka.group_state().unwrap().0 != "Stable" {
        assert!(Instant::now() < deadline, "the sink did not join");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let out = sink_command(&h, &["replay", "--from", "0:20", "--yes"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("active member"),
        "{}",
        text(&out.stderr)
    );
    stop.cancel();
    sink.await.unwrap().unwrap();
    wait_group_empty(&h).await;
    assert_eq!(h.count("SELECT count() FROM events").await, 900);

    // A dry run shows the plan and changes nothing.
    let out = sink_command(
        &h,
        &[
            "replay",
            "--from",
            "0:20",
            "--from",
            "2:30",
            "--dry-run",
            "--json",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let in_range = h
        .count("SELECT count() FROM events WHERE (kafka_partition = 0 AND kafka_offset >= 20) OR (kafka_partition = 2 AND kafka_offset >= 30)")
        .await;
    let planned: u64 = plan["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["rows"].as_u64().unwrap())
        .sum();
    assert_eq!(planned, in_range);
    assert!(in_range > 100);
    assert_eq!(h.count("SELECT count() FROM events").await, 900);

    for step in ["planned", "deleted", "rebuilt", "reset"] {
        let started = Utc::now();
        let out = sink_command(
            &h,
            &["replay", "--from", "0:20", "--from", "2:30", "--yes"],
            &[("CLICKSTREAM_REPLAY_CRASH_AFTER", step)],
        );
        assert!(
            !out.status.success(),
            "the replay should have crashed after {step}"
        );

        // A sink does not start on a half-done replay, and says what to do.
        let error = clickstream_sink::run(h.settings(), CancellationToken::new())
            .await
            .expect_err("the sink must refuse to start");
        let message = error.to_string();
        assert!(
            message.contains("stopped part-way") && message.contains("clickstream-sink replay"),
            "{message}"
        );

        // The next run finishes it: `replay` as the sink says (without a range), the same
        // command again, or another range (not planned: the output says so).
        let args: &[&str] = match step {
            "planned" => &["replay", "--from", "0:20", "--from", "2:30", "--yes"],
            "deleted" => &["replay", "--from", "0:10", "--yes"],
            _ => &["replay", "--yes"],
        };
        let out = sink_command(&h, args, &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert!(
            stdout.contains("stopped part-way") && stdout.contains("done"),
            "{stdout}"
        );
        assert_eq!(
            stdout.contains("not what this run replays"),
            step == "deleted",
            "{stdout}"
        );
        let rollups = verify::check_rollups(&h.client, &h.database, "events", None)
            .await
            .unwrap();
        assert!(
            rollups.iter().all(verify::RollupReport::equal),
            "after {step}: {rollups:?}"
        );
        assert_eq!(h.committed_offsets()[&0], 20, "after {step}");
        assert_eq!(h.committed_offsets()[&2], 30, "after {step}");

        // The sink puts the range back exactly once (its rows are new: inserted after the
        // replay started), and everything verifies.
        drain(&h, 900).await;
        h.assert_exactly_once(900).await;
        let reinserted = h
            .count(&format!(
                "SELECT count() FROM events WHERE ((kafka_partition = 0 AND kafka_offset >= 20) OR (kafka_partition = 2 AND kafka_offset >= 30)) \
                 AND inserted_at >= toDateTime64('{}', 3, 'UTC')",
                started.format("%Y-%m-%d %H:%M:%S%.3f")
            ))
            .await;
        assert_eq!(
            reinserted, in_range,
            "after a crash after {step}: the range was inserted again"
        );
        let report = verify::verify(&h.settings(), None).await.unwrap();
        assert!(report.ok(), "after {step}:\n{report}");
        wait_group_empty(&h).await;
    }
}

/// The sink's user may read `kafka_replay_steps` and no other replay table
/// (clickhouse/users.sql), and ClickHouse hides from `system.tables` the tables a user has no
/// grant on. The sink must see a replay through the steps alone: its id scopes the
/// deduplication tokens, or the replayed range is dropped as a duplicate of its first insert.
/// (The local engine has no grants: the table the sink user cannot see is dropped instead.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sink_that_sees_only_the_replay_steps_inserts_the_replayed_range_again() {
    let h = Harness::new("it_replay_steps_only").await;
    h.produce(&messages(0..300)).await;
    drain(&h, 300).await;
    wait_group_empty(&h).await;
    let out = sink_command(
        &h,
        &[
            "replay", "--from", "0:0", "--from", "1:0", "--from", "2:0", "--yes",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(h.count("SELECT count() FROM events").await, 0);

    h.client
        .query("DROP TABLE kafka_replays SYNC")
        .execute()
        .await
        .unwrap();
    let state = clickstream_sink::ops::replay::state(&h.client, &h.database, &h.topic)
        .await
        .unwrap();
    assert_ne!(state.generation, 0, "the replay is invisible: {state:?}");
    drain(&h, 300).await;
    h.assert_exactly_once(300).await;
}

/// A view refuses some of the letters `dlq replay` puts back, after the table and a rollup got
/// the whole insert: the replay deletes what the refused insert left before inserting the
/// rest in parts, rebuilds the rollup keys, and reports only the refused rows. Once the view
/// is fixed, a second replay inserts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dlq_replay_into_a_view_that_refuses_some_rows_stores_the_rest_once() {
    let h = Harness::new("it_dlq_replay_refused").await;
    // Three of the late events below (duration_ms is the event's number); the probe row of
    // `add_refusing_view` (price 3,999).
    clickstream_testkit::add_refusing_view(
        &h.client,
        &h.database,
        "ifNull(price, 0) >= 3999 OR duration_ms IN (311, 337, 352)",
    )
    .await
    .unwrap();
    let hours_ago = Utc::now() - chrono::Duration::hours(2);
    let mut batch = messages(0..300);
    for i in 300..360 {
        let e = event(i, hours_ago);
        batch.push((e.user_id.clone(), e.to_json()));
    }
    h.produce(&batch).await;
    let mut strict = h.settings();
    strict.max_event_age_s = 600;
    let (stop, sink) = spawn_sink(strict);
    h.wait_rows(300, Duration::from_secs(120)).await;
    h.dead_letters(60).await;
    // Its repair would race a running sink's inserts: refused, nothing done.
    let settings = h.settings();
    let refused = dlq::replay(&settings, &[], None, false).await;
    assert!(
        matches!(refused, Err(ReplayError::Refused(_))),
        "{refused:?}"
    );
    assert_eq!(h.count("SELECT count() FROM events").await, 300);
    stop.cancel();
    sink.await.unwrap().unwrap();
    wait_group_empty(&h).await;

    // A rebuild an earlier run left recorded, its minute counted twice meanwhile: done first.
    let window: String = h
        .client
        .query("SELECT toString(min(window_start)) FROM events_1m")
        .fetch_one()
        .await
        .unwrap();
    h.client
        .query("INSERT INTO events_1m SELECT * FROM events_1m WHERE toString(window_start) = ?")
        .bind(&window)
        .execute()
        .await
        .unwrap();
    h.client
        .query(
            "INSERT INTO kafka_pending_rebuilds (kafka_topic, kafka_partition, repair_id, rollup, key) \
             VALUES (?, 0, 77, 'events_1m', ?)",
        )
        .bind(&h.topic)
        .bind(&window)
        .execute()
        .await
        .unwrap();

    let done = dlq::replay(&settings, &[], None, false).await.unwrap();
    assert_eq!((done.inserted, done.rejected.len()), (57, 3), "{done}");
    assert_eq!(done.earlier_rebuilds, 1, "{done}");
    h.assert_exactly_once(357).await;
    h.assert_rollups_equal().await;
    assert!(done.partial_rows_removed >= 3, "{done}");
    assert!(done.rollup_keys_rebuilt > 0, "{done}");
    assert!(done.not_rebuilt.is_empty(), "{done}");
    assert_eq!(
        h.count("SELECT count() FROM kafka_pending_rebuilds").await,
        0,
        "the replay's rebuild records are left"
    );
    // inspect counts only the stored ones as replayed; the refused keep their marks.
    let inspection = dlq::inspect(&settings, &[], None, 0).await.unwrap();
    assert_eq!(
        (inspection.replayed, inspection.marked_not_stored),
        (57, 3),
        "{inspection}"
    );

    // The view fixed: the refused letters go in (their earlier inserts' tokens do not
    // deduplicate them away).
    h.client
        .query("DROP VIEW refuse_some_mv SYNC")
        .execute()
        .await
        .unwrap();
    let again = dlq::replay(&settings, &[], None, false).await.unwrap();
    assert_eq!((again.inserted, again.already_stored), (3, 57), "{again}");
    assert!(again.ok(), "{again}");
    h.assert_exactly_once(360).await;
    h.assert_rollups_equal().await;
    let inspection = dlq::inspect(&settings, &[], None, 0).await.unwrap();
    assert_eq!(
        (inspection.replayed, inspection.marked_not_stored),
        (60, 0),
        "{inspection}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dlq_replay_inserts_letters_valid_now_exactly_once() {
    let h = Harness::new("it_dlq_replay").await;
    let hours_ago = Utc::now() - chrono::Duration::hours(2);
    let mut batch = messages(0..300);
    for i in 300..340 {
        let e = event(i, hours_ago);
        batch.push((e.user_id.clone(), e.to_json()));
    }
    for n in 0..5 {
        batch.push((format!("poison_{n}"), b"{not json".to_vec()));
    }
    h.produce(&batch).await;

    // A sink that takes only the last 10 minutes dead-letters the late events.
    let mut strict = h.settings();
    strict.max_event_age_s = 600;
    let (stop, sink) = spawn_sink(strict);
    h.wait_rows(300, Duration::from_secs(120)).await;
    h.dead_letters(45).await;
    stop.cancel();
    sink.await.unwrap().unwrap();
    wait_group_empty(&h).await;

    let settings = h.settings();
    let inspection = dlq::inspect(&settings, &[], None, 2).await.unwrap();
    assert_eq!(inspection.letters, 45, "{inspection}");
    assert_eq!(
        inspection.by_reason["timestamp_out_of_window"], 40,
        "{inspection}"
    );
    assert_eq!(inspection.by_reason["invalid_json"], 5);
    assert_eq!(inspection.samples["invalid_json"].len(), 2);

    // With today's settings (7 days) the late events are valid: inserted once, under their
    // source offsets; the poison stays where it is.
    let done = dlq::replay(&settings, &[], None, false).await.unwrap();
    assert_eq!(done.inserted, 40, "{done}");
    assert_eq!(done.still_invalid["invalid_json"], 5);
    assert!(!done.ok());
    h.assert_exactly_once(340).await;
    // Twice is the same as once.
    let again = dlq::replay(&settings, &[], None, false).await.unwrap();
    assert_eq!((again.inserted, again.already_stored), (0, 40), "{again}");
    h.assert_exactly_once(340).await;

    // verify: the replayed letters count as stored, not as stored and dead-lettered.
    let report = verify::verify(&settings, None).await.unwrap();
    assert!(report.ok(), "{report}");
    let replayed: u64 = report
        .partitions
        .iter()
        .map(|p| p.replayed_from_dead_letters)
        .sum();
    assert_eq!(replayed, 40, "{report}");

    // The command, limited to one reason: exit 0 when every letter considered is stored.
    let out = sink_command(
        &h,
        &["dlq", "replay", "--reason", "timestamp_out_of_window"],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("40 already stored"),
        "{}",
        text(&out.stdout)
    );
    let out = sink_command(&h, &["dlq", "inspect", "--json"], &[]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["replayed"], 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_operations_run_at_a_time_and_a_killed_one_holds_nothing_once_lapsed() {
    let h = Harness::new("it_ops_lease").await;
    let settings = h.settings();
    let client = clickstream_sink::clickhouse_client::client(&settings).unwrap();
    let take = || lease::acquire(&client, &settings.database, &settings.topic, "test run");
    // Five runs starting at once: exactly one goes on; the others name it.
    let runs = futures_util::future::join_all((0..5).map(|_| take())).await;
    let (mut held, refused): (Vec<_>, Vec<_>) = runs.into_iter().partition(Result::is_ok);
    assert_eq!((held.len(), refused.len()), (1, 4));
    for refusal in refused {
        match refusal.err().unwrap() {
            ReplayError::Refused(Refusal::Busy { command, .. }) => assert_eq!(command, "test run"),
            other => panic!("{other}"),
        }
    }
    // `dlq replay` and `replay` refuse while it is held, and say what to do.
    match dlq::replay(&settings, &[], None, false).await {
        Err(ReplayError::Refused(Refusal::Busy { command, .. })) => assert_eq!(command, "test run"),
        other => panic!(
            "dlq replay ran beside another run: {:?}",
            other.map(|r| r.to_string())
        ),
    }
    let out = sink_command(&h, &["replay", "--from", "0:0", "--yes"], &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}{stderr}", text(&out.stdout));
    assert!(
        stderr.contains("holds the lease: `test run`") && stderr.contains("Run one at a time"),
        "{stderr}"
    );
    // Released: the next run goes on at once; `dlq replay` and `replay` release it whether
    // they succeed or not (here `replay` is not confirmed: no terminal, no --yes).
    held.pop().unwrap().unwrap().release().await;
    let done = dlq::replay(&settings, &[], None, false).await.unwrap();
    assert_eq!(done.letters, 0, "{done}");
    let out = sink_command(&h, &["replay", "--from", "0:0"], &[]);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("not confirmed"), "{stderr}");
    take()
        .await
        .expect("replay released the lease")
        .release()
        .await;
    // A holder reads the lease again before each step: one that is no longer first (here a
    // row of another run, earlier, as a run whose insert was slow to show would leave) stops.
    // 15 s earlier: before the holder's first row (taken 2 s and a few queries ago) however
    // slow the machine, and within the 30 s a run counts as seen.
    let holder = take().await.unwrap();
    holder.check().await.expect("still first");
    client
        .query(&format!(
            "INSERT INTO `{}`.ops_leases (kafka_topic, run_id, command, host, pid, scope, at) \
             VALUES (?, generateUUIDv4(), 'slow run', 'elsewhere', 1, '', now64(3) - INTERVAL 15 SECOND)",
            settings.database
        ))
        .bind(&settings.topic)
        .execute()
        .await
        .unwrap();
    match holder.check().await {
        Err(ReplayError::Refused(Refusal::Busy { command, .. })) => assert_eq!(command, "slow run"),
        other => panic!(
            "a holder no longer first went on: {:?}",
            other.err().map(|e| e.to_string())
        ),
    }
    drop(holder);
    tokio::time::sleep(lease::LAPSE + Duration::from_secs(1)).await;
    // A run killed (dropped without release) stops renewing: it holds the lease until it
    // lapses, then nothing.
    let killed = take().await.unwrap();
    drop(killed);
    assert!(
        take().await.is_err(),
        "a run seen moments ago still holds the lease"
    );
    tokio::time::sleep(lease::LAPSE + Duration::from_secs(1)).await;
    take()
        .await
        .expect("the killed run's lease lapsed")
        .release()
        .await;
    // A lapse is final: a run seen 40 s ago and again now (a renewal that landed late, after
    // another run may have taken the lease) holds nothing.
    client
        .query(&format!(
            "INSERT INTO `{}`.ops_leases (kafka_topic, run_id, command, host, pid, scope, at) \
             SELECT ?, toUUID('00000000-0000-0000-0000-000000000001'), 'late renewal', \
             'elsewhere', 1, '', now64(3) - toIntervalSecond(n) FROM (SELECT arrayJoin([40, 1]) AS n)",
            settings.database
        ))
        .bind(&settings.topic)
        .execute()
        .await
        .unwrap();
    take()
        .await
        .expect("a run whose lease lapsed once holds nothing")
        .release()
        .await;
}
