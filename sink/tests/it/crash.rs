//! Crash recovery of the real binary: SIGKILL at random moments and aborts exactly between an
//! insert and its commit; afterwards every event is in the table exactly once. The same
//! scenario with `--delivery at-least-once` must show duplicates: the oracle can fail.

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clickstream_sink::Settings;

use crate::common::{Harness, messages, spawn_sink};

fn start(h: &Harness, extra_env: &[(&str, String)], args: &[&str]) -> Child {
    command(h, extra_env, args)
        .stderr(if std::env::var("SINK_TEST_LOGS").is_ok() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .expect("start clickstream-sink")
}

/// The binary with the harness's settings, a short session and `extra_env`.
fn command(h: &Harness, extra_env: &[(&str, String)], args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_clickstream-sink"));
    command
        .args(args)
        .envs(h.env())
        // A killed member holds its partitions until its session times out: keep that short.
        .env("CLICKSTREAM_SINK_KAFKA__SESSION.TIMEOUT.MS", "3000")
        .env("CLICKSTREAM_SINK_KAFKA__HEARTBEAT.INTERVAL.MS", "300")
        .envs(extra_env.iter().map(|(k, v)| (*k, v.clone())))
        .envs(log_level())
        .stdout(Stdio::null());
    command
}

/// `SINK_TEST_LOGS=1` shows the binary's log; `SINK_TEST_LOGS=info` (any level) also sets it.
fn log_level() -> Option<(&'static str, String)> {
    std::env::var("SINK_TEST_LOGS")
        .ok()
        .filter(|v| v != "1")
        .map(|v| ("RUST_LOG", v))
}

fn kill(mut child: Child) {
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
}

/// Waits up to `limit` for `child` to exit on its own.
async fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for clickstream-sink") {
            return Some(status);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Events arrive in stages while the sink crashes again and again: each failpoint run gets
/// fresh events on every partition, so its N-th insert happens; each SIGKILL run gets fresh
/// events too, so the kill lands while there is work in flight. Returns the number of events
/// produced, once the table holds at least that many rows.
async fn crash_repeatedly(h: &Harness, args: &[&str]) -> u64 {
    const FAILPOINT_STAGE: u64 = 5_000;
    const KILL_STAGE: u64 = 800;
    const MORE: u64 = 1_000;
    let mut produced = 0;
    let mut stage = |n: u64| {
        let range = produced..produced + n;
        produced += n;
        messages(range)
    };
    // Aborts right after an insert, before its commit: the classic duplicate maker. How many
    // INSERTs a stage makes depends on timing (a flush writes its partitions together, and
    // rows wait for the rate limit), so more events follow until the N-th insert happens.
    for n in [1, 2, 3, 1] {
        h.produce(&stage(FAILPOINT_STAGE)).await;
        let mut child = start(
            h,
            &[("CLICKSTREAM_FAILPOINT", format!("abort-after-insert:{n}"))],
            args,
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(status) = wait_exit(&mut child, Duration::from_secs(10)).await {
                break status;
            }
            if std::time::Instant::now() > deadline {
                kill(child);
                panic!("the sink did not reach its failpoint (insert {n}) within 120 s");
            }
            h.produce(&stage(MORE)).await;
        };
        assert_eq!(
            status.signal(),
            Some(SIGABRT),
            "the failpoint aborts the sink: {status:?}"
        );
    }
    // SIGKILL at random moments.
    for _ in 0..12 {
        h.produce(&stage(KILL_STAGE)).await;
        let child = start(h, &[], args);
        let wait_ms = 500 + rand::random::<u64>() % 3_500;
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        kill(child);
    }
    h.produce(&stage(400)).await;
    let child = start(h, &[], args);
    // Distinct events, not rows: without exactly-once, duplicates reach the count early.
    h.wait_count(
        "SELECT uniqExact(event_id) FROM events",
        produced,
        Duration::from_secs(240),
    )
    .await;
    // Let it settle (commit), then stop it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    kill(child);
    produced
}

/// SIGABRT on Linux.
const SIGABRT: i32 = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crashes_at_random_moments_and_between_insert_and_commit_lose_and_duplicate_nothing() {
    let h = Harness::new("it_crash").await;
    let produced = crash_repeatedly(&h, &[]).await;
    assert!(produced >= 30_000, "{produced} events produced");
    h.assert_exactly_once(produced).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn negative_control_at_least_once_duplicates_under_the_same_crashes() {
    let h = Harness::new("it_crash_alo").await;
    let produced = crash_repeatedly(&h, &["--delivery", "at-least-once"]).await;
    let rows = h.count("SELECT count() FROM events").await;
    let distinct = h.count("SELECT uniqExact(event_id) FROM events").await;
    assert_eq!(distinct, produced, "nothing lost");
    assert!(
        rows > distinct,
        "without exactly-once the crashes duplicate rows: {rows} rows"
    );
}

/// SIGTERM with a batch still buffered: the sink flushes it, commits, leaves the group and
/// exits 0 within its shutdown bound; the committed offsets cover every row, so a restart
/// replays nothing.
/// Also: a sink tuned with consumer properties (a session timeout, a heartbeat interval) and a
/// producer one logs no librdkafka warning and no error from its start to its exit. The
/// `kafka` settings go to every client; librdkafka's "ignored by this producer instance"
/// warned at every start before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_mid_batch_flushes_commits_and_exits_0() {
    let h = Harness::new("it_sigterm").await;
    h.produce(&messages(0..3_000)).await;
    let port = clickstream_testkit::free_port();
    let log_path = std::env::temp_dir().join(format!("it_sigterm-{}.log", std::process::id()));
    let mut child = command(
        &h,
        &[
            // Nothing is flushed before the signal: the whole run is one buffered batch.
            ("CLICKSTREAM_SINK_FLUSH_INTERVAL_MS", "600000".to_owned()),
            ("CLICKSTREAM_SINK_MAX_ROWS", "1000000".to_owned()),
            ("CLICKSTREAM_SINK_HTTP_ADDR", format!("127.0.0.1:{port}")),
            ("CLICKSTREAM_SINK_SHUTDOWN_TIMEOUT_MS", "20000".to_owned()),
            // A producer property (the dead-letter producer's batches).
            (
                "CLICKSTREAM_SINK_KAFKA__BATCH.NUM.MESSAGES",
                "5000".to_owned(),
            ),
            ("RUST_LOG", "info".to_owned()),
            // The log must be free of librdkafka warnings: a 3 s session lost to one stall of
            // a loaded machine would warn, though the sink did nothing wrong.
            (
                "CLICKSTREAM_SINK_KAFKA__SESSION.TIMEOUT.MS",
                "10000".to_owned(),
            ),
        ],
        &[],
    )
    .stderr(std::fs::File::create(&log_path).expect("log file"))
    .spawn()
    .expect("start clickstream-sink");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        // Not answering yet counts as nothing consumed.
        let consumed = clickstream_testkit::scrape_metrics(port)
            .await
            .map_or(0.0, |m| {
                crate::common::metric(&m, "clickstream_sink_consumed_total")
            });
        if consumed >= 3_000.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "consumed only {consumed} of 3000 in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        h.count("SELECT count() FROM events").await,
        0,
        "the batch is still buffered"
    );

    let signalled = std::time::Instant::now();
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success());
    let Some(status) = wait_exit(&mut child, Duration::from_secs(30)).await else {
        kill(child);
        panic!("no exit within 30 s of the SIGTERM");
    };
    let log = std::fs::read_to_string(&log_path).expect("the sink's log");
    let _ = std::fs::remove_file(&log_path);
    assert!(
        status.success(),
        "exit code 0 after SIGTERM: {status:?}\n{log}"
    );
    assert!(log.contains("signal received"), "the log was read: {log}");
    let noise: Vec<&str> = log
        .lines()
        .filter(|l| (l.contains("WARN") && l.contains("librdkafka")) || l.contains("ERROR"))
        .collect();
    assert!(
        noise.is_empty(),
        "no librdkafka warning, no error: {noise:#?}"
    );
    assert!(
        signalled.elapsed() < Duration::from_secs(25),
        "exits within the shutdown bound (20 s): took {:?}",
        signalled.elapsed()
    );
    h.assert_exactly_once(3_000).await;

    // Committed offsets = rows per partition (offsets start at 0): a restart replays nothing.
    let per_partition = h.rows_per_partition().await;
    let committed = h.committed_offsets();
    assert_eq!(
        committed, per_partition,
        "committed offsets cover every row"
    );
}

/// Rows deleted by hand, then read again by a new group; the sink dies right after the first
/// INSERT of them, before it reads their rollup keys. Its successor finds those rows stored
/// and skips them: it rebuilds their keys from the offsets recorded before the INSERT, so
/// every rollup counts each row once (the delete left them counting the old rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sink_killed_right_after_inserting_rows_read_again_leaves_the_rollups_equal() {
    let h = Harness::new("it_reread_abort").await;
    // In two stages, so that reading all 300 at once later makes other offset ranges, so
    // other deduplication tokens: the first INSERT of the rows read again stores them.
    h.produce(&messages(0..150)).await;
    h.sink_until(h.settings(), 150).await;
    h.produce(&messages(150..300)).await;
    h.sink_until(h.settings(), 300).await;
    h.delete_all_rows_by_hand().await;
    let group = format!("{}_reset", h.group);
    let mut child = start(
        &h,
        &[
            ("CLICKSTREAM_FAILPOINT", "abort-after-insert:1".to_owned()),
            ("CLICKSTREAM_SINK_GROUP", group.clone()),
            ("CLICKSTREAM_SINK_FLUSH_INTERVAL_MS", "3000".to_owned()),
        ],
        &[],
    );
    let Some(status) = wait_exit(&mut child, Duration::from_secs(120)).await else {
        kill(child);
        panic!("the sink did not reach its failpoint within 120 s");
    };
    assert_eq!(status.signal(), Some(SIGABRT), "{status:?}");
    let stored = h.count("SELECT count() FROM events").await;
    assert!(
        stored > 0 && stored < 300,
        "one partition's rows stored by the first INSERT: {stored}"
    );
    let (stop, sink) = spawn_sink(Settings {
        group,
        ..h.settings()
    });
    h.wait_rows(300, Duration::from_secs(60)).await;
    // The offsets recorded before the INSERT are taken over (and forgotten once their keys
    // are rebuilt) at the successor's first write of that partition.
    let owed = format!(
        "SELECT toUInt64(count() = 0) FROM kafka_pending_rebuilds WHERE kafka_topic = '{}'",
        h.topic
    );
    h.wait_count(&owed, 1, Duration::from_secs(60)).await;
    stop.cancel();
    sink.await.expect("sink task").expect("clean shutdown");
    assert_eq!(h.count("SELECT count() FROM events").await, 300);
    assert_eq!(h.count("SELECT uniqExact(event_id) FROM events").await, 300);
    h.assert_rollups_equal().await;
}
