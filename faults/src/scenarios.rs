//! The scenarios. Each injects its faults into a run of the real sink binary, then lets the
//! oracle judge the end state. A scenario passes when every produced offset is found exactly
//! once (table or dead-letter topic) and the rollups equal the raw table; the negative control
//! passes when the oracle finds the duplicates at-least-once delivery makes.

use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::{Value, json};

use crate::proxy::SlowProxy;
use crate::run::{Run, Stack, Verdict, kill_stack_service, scrape, start_stack};

pub const ALL: &[&str] = &[
    "sigkill",
    "sigterm",
    "clickhouse-down",
    "clickhouse-slow",
    "rebalance",
    "broker-restart",
    "poison",
    "negative-control",
    "oversized-poison",
    "backfill-150-days",
    "alter-modify-column",
    "add-column-restart",
    "incompatible-alter",
    "group-reset",
    "clickhouse-hang-on-assignment",
    "rebalance-mid-lookup",
    "memory-limit",
    "view-refuses-rows",
    "killed-before-rebuild",
    "sigterm-mid-isolation",
    "disk-full",
    "unknown-error",
    "source-duplicates",
    "poison-kills-rebalance",
    "zombie",
    "clock-jump",
];

/// The scenarios `scripts/test` runs (about 6 minutes; none stops a shared service).
pub const FAST: &[&str] = &[
    "oversized-poison",
    "backfill-150-days",
    "alter-modify-column",
    "add-column-restart",
    "incompatible-alter",
    "group-reset",
    "clickhouse-hang-on-assignment",
    "rebalance-mid-lookup",
    "memory-limit",
    "view-refuses-rows",
    "killed-before-rebuild",
    "sigterm-mid-isolation",
    "disk-full",
    "unknown-error",
    "source-duplicates",
    "zombie",
];

#[derive(Debug, Serialize)]
pub struct Outcome {
    pub scenario: String,
    pub run_at: String,
    pub git_commit: String,
    pub broker_storage: String,
    pub passed: bool,
    pub skipped: Option<String>,
    pub seconds: f64,
    pub injected: Value,
    pub verdict: Option<Verdict>,
    pub error: Option<String>,
}

pub async fn run(name: &str, stack: &Stack) -> Outcome {
    let started = Instant::now();
    let result = match name {
        "sigkill" => kills(stack, "sigkill", &[]).await,
        "negative-control" => {
            kills(stack, "negative-control", &["--delivery", "at-least-once"]).await
        }
        "sigterm" => sigterm(stack).await,
        "clickhouse-down" => clickhouse_down(stack).await,
        "clickhouse-slow" => clickhouse_slow(stack).await,
        "rebalance" => rebalance(stack).await,
        "broker-restart" => broker_restart(stack).await,
        "poison" => poison(stack).await,
        "oversized-poison" => oversized_poison(stack).await,
        "backfill-150-days" => backfill(stack).await,
        "alter-modify-column" => alter_modify_column(stack).await,
        "add-column-restart" => add_column_restart(stack).await,
        "incompatible-alter" => incompatible_alter(stack).await,
        "group-reset" => group_reset(stack).await,
        "clickhouse-hang-on-assignment" => clickhouse_hang(stack).await,
        "rebalance-mid-lookup" => rebalance_mid_lookup(stack).await,
        "memory-limit" => memory_limit(stack).await,
        "view-refuses-rows" => view_refuses_rows(stack).await,
        "killed-before-rebuild" => killed_before_rebuild(stack).await,
        "sigterm-mid-isolation" => sigterm_mid_isolation(stack).await,
        "disk-full" => disk_full(stack).await,
        "unknown-error" => unknown_error(stack).await,
        "source-duplicates" => source_duplicates(stack).await,
        "poison-kills-rebalance" => poison_kills_rebalance(stack).await,
        "zombie" => zombie(stack).await,
        "clock-jump" => clock_jump(stack).await,
        other => Err(anyhow::anyhow!("unknown scenario {other}")),
    };
    let seconds = (started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    let mut outcome = judge(name, result, seconds);
    outcome.run_at = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string();
    outcome.git_commit = crate::git_commit();
    outcome.broker_storage = if stack.durable_broker {
        "durable (sqlite)".to_owned()
    } else {
        "memory".to_owned()
    };
    outcome
}

fn judge(name: &str, result: anyhow::Result<Done>, seconds: f64) -> Outcome {
    match result {
        Ok(Done::Judged(injected, verdict)) => {
            let passed = if name == "negative-control" {
                verdict.duplicates > 0 && verdict.missing == 0
            } else {
                verdict.exact && verdict.rollups_equal
            };
            Outcome {
                scenario: name.to_owned(),
                run_at: String::new(),
                git_commit: String::new(),
                broker_storage: String::new(),
                passed,
                skipped: None,
                seconds,
                injected,
                verdict: Some(verdict),
                error: None,
            }
        }
        Ok(Done::Skipped(reason)) => Outcome {
            scenario: name.to_owned(),
            run_at: String::new(),
            git_commit: String::new(),
            broker_storage: String::new(),
            passed: false,
            skipped: Some(reason),
            seconds,
            injected: Value::Null,
            verdict: None,
            error: None,
        },
        Err(error) => Outcome {
            scenario: name.to_owned(),
            run_at: String::new(),
            git_commit: String::new(),
            broker_storage: String::new(),
            passed: false,
            skipped: None,
            seconds,
            injected: Value::Null,
            verdict: None,
            error: Some(format!("{error:#}")),
        },
    }
}

pub enum Done {
    Judged(Value, Verdict),
    Skipped(String),
}

/// Waits for the last sink to account for everything, stops it with SIGTERM, judges.
async fn finish(
    run: Arc<Run>,
    last: crate::run::SinkProcess,
    injected: Value,
) -> anyhow::Result<Done> {
    run.wait_accounted(Duration::from_secs(300)).await?;
    let status = last.terminate(Duration::from_secs(60)).await?;
    anyhow::ensure!(status.success(), "the last sink exited with {status:?}");
    let verdict = run.verdict().await?;
    if let Ok(run) = Arc::try_unwrap(run) {
        run.cleanup().await;
    }
    Ok(Done::Judged(injected, verdict))
}

/// At least 20 crashes: aborts exactly between an insert and its commit (failpoint), and
/// SIGKILLs at random moments while events stream in (before, during and after inserts).
async fn kills(stack: &Stack, name: &str, args: &[&str]) -> anyhow::Result<Done> {
    let run = Arc::new(Run::new(name, stack, 11, 0.0).await?);
    let mut between_insert_and_commit = 0;
    for n in [1, 2, 3, 1, 2, 3] {
        // Fresh events on every partition, and more while the sink runs: the partitions of a
        // flush go in one INSERT, so the n-th insert needs events that arrive after the first.
        run.produce(4_000).await?;
        let streamer = {
            let run = run.clone();
            tokio::spawn(async move { run.stream(1_000, 15).await })
        };
        let mut sink = run.start_sink(
            &[("CLICKSTREAM_FAILPOINT", format!("abort-after-insert:{n}"))],
            args,
        )?;
        // After the stream, 1,000 more every 5 s until the n-th insert happens (a slow group
        // join can leave the stream short of it).
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut fed = Instant::now();
        let status = loop {
            if let Some(status) = sink.exited()? {
                break status;
            }
            if Instant::now() > deadline {
                sink.kill();
                anyhow::bail!("the sink did not reach its failpoint (insert {n}) within 120 s");
            }
            if streamer.is_finished() && fed.elapsed() > Duration::from_secs(5) {
                run.produce(1_000).await?;
                fed = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        streamer.await.context("streamer")??;
        anyhow::ensure!(
            status.signal() == Some(6),
            "failpoint run ended with {status:?}, not SIGABRT"
        );
        between_insert_and_commit += 1;
    }
    let streamer = {
        let run = run.clone();
        tokio::spawn(async move { run.stream(2_000, 50).await })
    };
    let mut random_kills = Vec::new();
    let began = Instant::now();
    while random_kills.len() < 16 || !streamer.is_finished() {
        let sink = run.start_sink(&[], args)?;
        let wait_ms = 300 + rand::random::<u64>() % 3_700;
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        sink.kill();
        random_kills.push(wait_ms);
        if began.elapsed() > Duration::from_secs(240) {
            break;
        }
    }
    streamer.await.context("streamer")??;
    let last = run.start_sink(&[], args)?;
    let injected = json!({
        "aborts_between_insert_and_commit": between_insert_and_commit,
        "sigkills_at_random_moments": random_kills.len(),
        "sigkill_after_ms": random_kills,
        "delivery": if args.is_empty() { "exactly-once" } else { "at-least-once" },
        "stream": "6 stages of 4,000 events pre-loaded + 1,000 events/s for 15 s (then 1,000 more every 5 s until the failpoint fired), then 2,000 events/s for 50 s",
    });
    finish(run, last, injected).await
}

/// SIGTERM with a batch buffered: the sink flushes and commits; its successor replays nothing.
async fn sigterm(stack: &Stack) -> anyhow::Result<Done> {
    let run = Arc::new(Run::new("sigterm", stack, 12, 0.0).await?);
    run.produce(5_000).await?;
    let long_batch = [
        ("CLICKSTREAM_SINK_FLUSH_INTERVAL_MS", "600000".to_owned()),
        ("CLICKSTREAM_SINK_MAX_ROWS", "1000000".to_owned()),
    ];
    let first = run.start_sink(&long_batch, &[])?;
    wait_metric(
        &first,
        "clickstream_sink_consumed_total",
        5_000.0,
        Duration::from_secs(60),
    )
    .await?;
    let buffered: u64 = run
        .client
        .query("SELECT count() FROM events")
        .fetch_one()
        .await?;
    anyhow::ensure!(
        buffered == 0,
        "{buffered} rows written before the signal: the batch was not buffered"
    );
    let signalled = Instant::now();
    let status = first.terminate(Duration::from_secs(60)).await?;
    let exit_ms = signalled.elapsed().as_millis() as u64;
    anyhow::ensure!(status.success(), "SIGTERM exit: {status:?}");

    // The successor consumes only what is new: exactly one fresh message.
    let second = run.start_sink(&[], &[])?;
    tokio::time::sleep(Duration::from_secs(8)).await;
    run.produce(1).await?;
    wait_metric(
        &second,
        "clickstream_sink_consumed_total",
        1.0,
        Duration::from_secs(60),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let replayed = scrape(second.http_port)
        .await?
        .get("clickstream_sink_consumed_total")
        .copied()
        .unwrap_or(0.0)
        - 1.0;
    anyhow::ensure!(
        replayed == 0.0,
        "the successor replayed {replayed} messages"
    );
    let injected = json!({
        "sigterm_with_rows_buffered": 5_000,
        "exit_after_sigterm_ms": exit_ms,
        "replayed_by_successor": replayed,
    });
    finish(run, second, injected).await
}

/// The ClickHouse endpoint is killed mid-stream and stays down 30 s.
async fn clickhouse_down(stack: &Stack) -> anyhow::Result<Done> {
    let run = Arc::new(Run::new("clickhouse-down", stack, 13, 0.0).await?);
    let sink = run.start_sink(&[], &[])?;
    let streamer = {
        let run = run.clone();
        tokio::spawn(async move { run.stream(1_000, 60).await })
    };
    tokio::time::sleep(Duration::from_secs(10)).await;
    kill_stack_service("clickhouse")?;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let retries = sink.metric("clickstream_sink_retries_total").await;
    let buffered = sink.metric("clickstream_sink_buffered_rows").await;
    let paused = sink.metric("clickstream_sink_paused_partitions").await;
    start_stack().await?;
    streamer.await.context("streamer")??;
    let injected = json!({
        "clickhouse_killed_for_s": 30,
        "insert_retries_during_outage": retries,
        "rows_buffered_at_end_of_outage": buffered,
        "paused_partitions_at_end_of_outage": paused,
        "stream": "1,000 events/s for 60 s",
    });
    finish(run, sink, injected).await
}

/// ClickHouse answers slowly (every response chunk delayed 4 s, longer than the sink's 3 s
/// insert timeout) for 30 s mid-stream: inserts time out and are retried with the same token.
async fn clickhouse_slow(stack: &Stack) -> anyhow::Result<Done> {
    let upstream = stack
        .clickhouse_url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let proxy = SlowProxy::start(upstream).await?;
    let run = Arc::new(Run::new("clickhouse-slow", stack, 14, 0.0).await?);
    let sink = run.start_sink(
        &[
            ("CLICKHOUSE_URL", proxy.url()),
            // Slow enough that some inserts time out and are retried with the same token.
            ("CLICKSTREAM_SINK_INSERT_TIMEOUT_MS", "3000".to_owned()),
        ],
        &[],
    )?;
    let streamer = {
        let run = run.clone();
        tokio::spawn(async move { run.stream(1_000, 50).await })
    };
    tokio::time::sleep(Duration::from_secs(10)).await;
    proxy.set_delay(Duration::from_secs(4));
    tokio::time::sleep(Duration::from_secs(30)).await;
    proxy.set_delay(Duration::ZERO);
    let retries = sink.metric("clickstream_sink_retries_total").await;
    streamer.await.context("streamer")??;
    let injected = json!({
        "response_delay_ms": 4_000,
        "slow_for_s": 30,
        "insert_timeout_ms": 3_000,
        "insert_retries": retries,
        "stream": "1,000 events/s for 50 s",
    });
    let done = finish(run, sink, injected).await;
    drop(proxy);
    done
}

/// A second and a third sink join and leave mid-stream (one by SIGTERM, one by SIGKILL).
async fn rebalance(stack: &Stack) -> anyhow::Result<Done> {
    let run = Arc::new(Run::new("rebalance", stack, 15, 0.0).await?);
    let first = run.start_sink(&[], &[])?;
    let streamer = {
        let run = run.clone();
        tokio::spawn(async move { run.stream(1_000, 60).await })
    };
    tokio::time::sleep(Duration::from_secs(10)).await;
    let second = run.start_sink(&[], &[])?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let third = run.start_sink(&[], &[])?;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let inserted_by = [
        first.metric("clickstream_sink_inserted_rows_total").await,
        second.metric("clickstream_sink_inserted_rows_total").await,
        third.metric("clickstream_sink_inserted_rows_total").await,
    ];
    let status = second.terminate(Duration::from_secs(60)).await?;
    anyhow::ensure!(status.success(), "second sink's SIGTERM exit: {status:?}");
    tokio::time::sleep(Duration::from_secs(10)).await;
    third.kill();
    streamer.await.context("streamer")??;
    let injected = json!({
        "joins": 2,
        "leaves": {"sigterm": 1, "sigkill": 1},
        "rows_inserted_by_each_sink_while_three_ran": inserted_by,
        "stream": "1,000 events/s for 60 s",
    });
    finish(run, first, injected).await
}

/// The broker is killed mid-stream and restarted 5 s later (needs a durable storage engine).
async fn broker_restart(stack: &Stack) -> anyhow::Result<Done> {
    if !stack.durable_broker {
        return Ok(Done::Skipped(
            "the broker's storage is not durable (set STACK_KAFKA_STORAGE=sqlite://... with a tansu built with --features dynostore,libsql; scripts/faults does this when it can)".to_owned(),
        ));
    }
    let run = Arc::new(Run::new("broker-restart", stack, 16, 0.0).await?);
    let sink = run.start_sink(&[], &[])?;
    let streamer = {
        let run = run.clone();
        tokio::spawn(async move { run.stream(500, 50).await })
    };
    tokio::time::sleep(Duration::from_secs(15)).await;
    kill_stack_service("kafka")?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    start_stack().await?;
    streamer.await.context("streamer")??;
    let injected = json!({
        "broker_killed_for_s": 5,
        "stream": "500 events/s for 50 s",
    });
    finish(run, sink, injected).await
}

/// 5% poison of every kind the producer makes, plus oversized messages up to 900 KiB.
async fn poison(stack: &Stack) -> anyhow::Result<Done> {
    let run = Arc::new(Run::new("poison", stack, 17, 0.05).await?);
    run.produce(20_000).await?;
    let oversized: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| {
            let size = 200 * 1024 + i * 35 * 1024;
            (format!("user_{i:04}"), vec![b'x'; size])
        })
        .collect();
    run.produce_messages(oversized).await?;
    let sink = run.start_sink(&[], &[])?;
    let injected = json!({
        "events": 20_000,
        "poison_ratio": 0.05,
        "extra_oversized": 20,
        "oversized_bytes": "200 KiB to 865 KiB",
    });
    let done = finish(run, sink, injected).await?;
    if let Done::Judged(_, verdict) = &done {
        let reasons = &verdict.dead_letter_reasons;
        if reasons.len() < 9 {
            bail!(
                "only {} dead-letter reasons seen: {reasons:?}",
                reasons.len()
            );
        }
    }
    Ok(done)
}

async fn wait_metric(
    sink: &crate::run::SinkProcess,
    name: &str,
    at_least: f64,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let value = sink.metric(name).await;
        if value >= at_least {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{name} reached only {value} of {at_least} within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Streams `rate` events/s for `seconds` in the background.
fn stream(run: &Arc<Run>, rate: u64, seconds: u64) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let run = run.clone();
    tokio::spawn(async move { run.stream(rate, seconds).await })
}

/// Valid events only: nothing may have been dead-lettered.
fn none_dead_lettered(v: &Verdict) -> anyhow::Result<()> {
    anyhow::ensure!(
        v.dead_lettered == 0,
        "{} valid events dead-lettered",
        v.dead_lettered
    );
    Ok(())
}

/// Fails when the judged scenario's end state is not what `check` expects.
fn also(done: &Done, check: impl FnOnce(&Verdict) -> anyhow::Result<()>) -> anyhow::Result<()> {
    match done {
        Done::Judged(_, verdict) => check(verdict),
        Done::Skipped(_) => Ok(()),
    }
}

/// A message just under Kafka's size limit among valid events: the sink goes on, the letter
/// arrives (whole where it fits the dead-letter topic, cut with its length and SHA-256 where
/// it does not).
async fn oversized_poison(stack: &Stack) -> anyhow::Result<Done> {
    let run = Arc::new(Run::new("oversized-poison", stack, 21, 0.0).await?);
    run.produce(1_000).await?;
    run.produce_messages(vec![
        ("user_big".to_owned(), vec![b'x'; 1_040_000]),
        ("user_bigger".to_owned(), vec![b'y'; 1_048_000]),
    ])
    .await?;
    run.produce(2_000).await?;
    let sink = run.start_sink(&[], &[])?;
    run.wait_accounted(Duration::from_secs(120)).await?;
    let letters = run.letters();
    let whole = letters.iter().find(|l| l.payload_len == 1_040_000);
    let cut = letters
        .iter()
        .find(|l| l.headers.get("payload_truncated").map(String::as_str) == Some("true"));
    anyhow::ensure!(
        whole.is_some(),
        "the 1,040,000-byte letter did not arrive whole"
    );
    let cut = cut.context("the 1,048,000-byte letter did not arrive cut")?;
    anyhow::ensure!(
        cut.headers.get("payload_length").map(String::as_str) == Some("1048000")
            && cut
                .headers
                .get("payload_sha256")
                .is_some_and(|h| h.len() == 64)
            && cut.headers.contains_key("source_offset"),
        "the cut letter lacks its length, digest or source: {:?}",
        cut.headers
    );
    let injected = json!({
        "events": 3_000,
        "oversized_bytes": [1_040_000, 1_048_000],
        "letter_bytes": [1_040_000, cut.payload_len],
        "truncated_letters": sink.metric("clickstream_sink_dead_letters_truncated_total").await,
    });
    finish(run, sink, injected).await
}

/// A backfill whose events span 150 days: one INSERT would touch more than 100 daily
/// partitions; the sink splits it by time and stores everything. (The raw table keeps 90
/// days: an operator backfilling older history raises its TTL first, as done here.)
async fn backfill(stack: &Stack) -> anyhow::Result<Done> {
    let run = Arc::new(Run::new("backfill-150-days", stack, 22, 0.0).await?);
    run.sql("ALTER TABLE events MODIFY TTL toDateTime(event_time) + INTERVAL 400 DAY")
        .await?;
    let start = chrono::Utc::now() - chrono::Duration::days(150);
    let times: Vec<_> = (0..900)
        .map(|i| start + chrono::Duration::hours(4 * i))
        .collect();
    run.produce_timed(run.events_at(&times)).await?;
    let sink = run.start_sink(&[], &[])?;
    run.wait_accounted(Duration::from_secs(120)).await?;
    let splits = sink.metric("clickstream_sink_insert_splits_total").await;
    let days: u64 = run
        .client
        .query("SELECT uniqExact(toDate(event_time)) FROM events")
        .fetch_one()
        .await?;
    let injected = json!({
        "events": 900,
        "event_days": days,
        "insert_splits": splits,
    });
    let done = finish(run, sink, injected).await?;
    also(&done, |v| {
        none_dead_lettered(v)?;
        anyhow::ensure!(splits > 0.0, "no insert was split: the limit was never hit");
        Ok(())
    })?;
    Ok(done)
}

/// `MODIFY COLUMN duration_ms UInt64` while events stream in: the sink follows the new
/// structure; nothing is dead-lettered.
async fn alter_modify_column(stack: &Stack) -> anyhow::Result<Done> {
    let run = Arc::new(Run::new("alter-modify-column", stack, 23, 0.0).await?);
    let sink = run.start_sink(&[], &[])?;
    let streamer = stream(&run, 1_000, 20);
    tokio::time::sleep(Duration::from_secs(8)).await;
    run.sql("ALTER TABLE events MODIFY COLUMN duration_ms UInt64")
        .await?;
    streamer.await.context("streamer")??;
    run.wait_accounted(Duration::from_secs(120)).await?;
    let changes = sink.metric("clickstream_sink_schema_changes_total").await;
    let injected = json!({
        "alter": "MODIFY COLUMN duration_ms UInt64 after 8 s",
        "schema_changes_followed": changes,
        "stream": "1,000 events/s for 20 s",
    });
    let done = finish(run, sink, injected).await?;
    also(&done, |v| {
        none_dead_lettered(v)?;
        anyhow::ensure!(changes >= 1.0, "the change was not followed");
        Ok(())
    })?;
    Ok(done)
}

/// `ADD COLUMN ... DEFAULT` live, then a restart: new rows get the default, nothing is lost
/// or repeated.
async fn add_column_restart(stack: &Stack) -> anyhow::Result<Done> {
    let run = Arc::new(Run::new("add-column-restart", stack, 24, 0.0).await?);
    let first = run.start_sink(&[], &[])?;
    let streamer = stream(&run, 1_000, 15);
    tokio::time::sleep(Duration::from_secs(5)).await;
    run.sql("ALTER TABLE events ADD COLUMN campaign LowCardinality(String) DEFAULT 'none'")
        .await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let status = first.terminate(Duration::from_secs(60)).await?;
    anyhow::ensure!(status.success(), "SIGTERM exit: {status:?}");
    let second = run.start_sink(&[], &[])?;
    streamer.await.context("streamer")??;
    run.wait_accounted(Duration::from_secs(120)).await?;
    let defaulted: u64 = run
        .client
        .query("SELECT countIf(campaign = 'none') FROM events")
        .fetch_one()
        .await?;
    let injected = json!({
        "alter": "ADD COLUMN campaign DEFAULT 'none' after 5 s; SIGTERM and restart after 9 s",
        "rows_with_the_default": defaulted,
        "stream": "1,000 events/s for 15 s",
    });
    let done = finish(run, second, injected).await?;
    also(&done, |v| {
        anyhow::ensure!(
            defaulted == v.rows_in_clickhouse,
            "{defaulted} of {} rows have the default",
            v.rows_in_clickhouse
        );
        none_dead_lettered(v)?;
        Ok(())
    })?;
    Ok(done)
}

/// A column retyped so that it cannot hold every valid event (`duration_ms UInt16`): the sink
/// stops with exit code 1 naming the column, commits nothing more; after the ALTER is undone
/// a restart delivers everything exactly once.
async fn incompatible_alter(stack: &Stack) -> anyhow::Result<Done> {
    let run = Arc::new(Run::new("incompatible-alter", stack, 25, 0.0).await?);
    run.produce(2_000).await?;
    let first = run.start_sink(&[], &[])?;
    run.wait_accounted(Duration::from_secs(120)).await?;
    run.sql("ALTER TABLE events MODIFY COLUMN duration_ms UInt16")
        .await?;
    run.produce(2_000).await?;
    let log_path = first.log.clone();
    let status = first.wait_exit(Duration::from_secs(60)).await?.code();
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    anyhow::ensure!(status == Some(1), "the sink exited with {status:?}, not 1");
    let named = log
        .lines()
        .any(|l| l.contains("duration_ms") && l.contains("UInt16"));
    anyhow::ensure!(named, "the error does not name duration_ms and its type");
    run.sql("ALTER TABLE events MODIFY COLUMN duration_ms UInt32")
        .await?;
    let second = run.start_sink(&[], &[])?;
    let injected = json!({
        "alter": "MODIFY COLUMN duration_ms UInt16 with the sink running, then back to UInt32",
        "first_sink_exit_code": status,
        "error_names_the_column": named,
    });
    finish(run, second, injected).await
}

/// A consumer group reset (a new group name): the sink re-reads the whole topic, skips every
/// stored offset, and its memory does not grow with the history (peak RSS recorded).
async fn group_reset(stack: &Stack) -> anyhow::Result<Done> {
    let events = if stack.full { 1_000_000 } else { 60_000 };
    let run = Arc::new(Run::new("group-reset", stack, 26, 0.0).await?);
    for _ in 0..events / 20_000 {
        run.produce(20_000).await?;
    }
    let first = run.start_sink(&[], &[])?;
    run.wait_accounted(Duration::from_secs(600)).await?;
    let first_rss = first.peak_rss_mb();
    let status = first.terminate(Duration::from_secs(60)).await?;
    anyhow::ensure!(status.success(), "first sink: {status:?}");
    let reset = [("CLICKSTREAM_SINK_GROUP", format!("{}_reset", run.group))];
    let second = run.start_sink(&reset, &[])?;
    let started = Instant::now();
    wait_metric(
        &second,
        "clickstream_sink_replay_skipped_total",
        events as f64,
        Duration::from_secs(600),
    )
    .await?;
    let reread_s = started.elapsed().as_secs_f64();
    let inserted = second.metric("clickstream_sink_inserted_rows_total").await;
    let rss = second.peak_rss_mb();
    anyhow::ensure!(
        inserted == 0.0,
        "the reset group inserted {inserted} rows again"
    );
    let injected = json!({
        "events": events,
        "reset": "a new consumer group re-reads the topic from the start",
        "reread_seconds": (reread_s * 10.0).round() / 10.0,
        "peak_rss_mb_first_sink": first_rss,
        "peak_rss_mb_rereading_sink": rss,
    });
    finish(run, second, injected).await
}

/// ClickHouse hangs (20 s) on the stored-offset lookup of an assignment: the lookup times out
/// and is retried while the consumer keeps polling (no rebalance), the sink reports itself
/// stalled meanwhile, and then delivers everything once.
async fn clickhouse_hang(stack: &Stack) -> anyhow::Result<Done> {
    let run = Arc::new(Run::new("clickhouse-hang-on-assignment", stack, 27, 0.0).await?);
    run.produce(3_000).await?;
    let hang = json!({"queries": true, "match": "kafka_progress", "database": run.database, "delay_ms": 20_000});
    run.inject(hang.clone()).await?;
    let sink = run.start_sink(
        &[
            ("CLICKSTREAM_SINK_INSERT_TIMEOUT_MS", "3000".to_owned()),
            ("CLICKSTREAM_SINK_STALL_TIMEOUT_MS", "5000".to_owned()),
        ],
        &[],
    )?;
    let began = Instant::now();
    let mut not_ready = 0;
    while began.elapsed() < Duration::from_secs(20) {
        if sink.ready_status().await == 503 {
            not_ready += 1;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The endpoint matches on the rule's `match` key to clear it.
    run.clear_fault_matching("kafka_progress").await?;
    run.wait_accounted(Duration::from_secs(120)).await?;
    let log = sink.log_text();
    let assignments = log.matches("partitions assigned").count();
    let revokes = log.matches("partitions revoked").count();
    anyhow::ensure!(
        not_ready > 0,
        "/ready never said 503 while the lookups hung"
    );
    anyhow::ensure!(
        assignments == 1 && revokes == 0,
        "the group rebalanced during the hang ({assignments} assignments, {revokes} revokes)"
    );
    let injected = json!({
        "hang": "stored-offset lookups answer after 20 s (insert_timeout_ms 3000) for 20 s",
        "ready_503_samples": not_ready,
        "assignments": assignments,
        "lookup_retries": sink.metric("clickstream_sink_retries_total").await,
    });
    finish(run, sink, injected).await
}

/// A second sink joins while the first one's stored-offset lookups hang (each waits, its
/// partition paused): the group takes every partition from the first sink and gives some
/// back. A partition it gets back must be read again once the lookups answer, though the
/// lookup it paused for belongs to the old assignment.
async fn rebalance_mid_lookup(stack: &Stack) -> anyhow::Result<Done> {
    let run = Arc::new(Run::new("rebalance-mid-lookup", stack, 38, 0.0).await?);
    run.produce(3_000).await?;
    let lookups = "maxOrNull(max_offset)";
    let hang =
        json!({"queries": true, "match": lookups, "database": run.database, "delay_ms": 60_000});
    run.inject(hang).await?;
    let env = [("CLICKSTREAM_SINK_INSERT_TIMEOUT_MS", "3000".to_owned())];
    let first = run.start_sink(&env, &[])?;
    // Its lookups started (and hang): its partitions are paused.
    wait_for_log(&first, |log| log.contains("reading partition"), 60).await?;
    let second = run.start_sink(&env, &[])?;
    // The group took the first sink's partitions and gave some back, all while they hang.
    wait_for_log(
        &first,
        |log| {
            log.split_once("partitions revoked")
                .is_some_and(|(_, after)| after.contains("partitions assigned"))
        },
        50,
    )
    .await
    .context("the group did not rebalance while the lookups hung")?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    run.clear_fault_matching(lookups).await?;
    run.wait_accounted(Duration::from_secs(90)).await?;
    let log = first.log_text();
    let (_, after) = log.split_once("partitions revoked").unwrap_or_default();
    anyhow::ensure!(
        after.contains("reading partition"),
        "the first sink did not read again what it got back"
    );
    let status = second.terminate(Duration::from_secs(60)).await?;
    anyhow::ensure!(status.success(), "second sink's SIGTERM exit: {status:?}");
    let injected = json!({
        "hang": "stored-offset lookups answer after 60 s (insert_timeout_ms 3000) until the group has rebalanced",
        "first_sink_revokes": log.matches("partitions revoked").count(),
        "first_sink_assignments": log.matches("partitions assigned").count(),
    });
    finish(run, first, injected).await
}

/// Waits up to `seconds` for the sink's log to satisfy `done`.
async fn wait_for_log(
    sink: &crate::run::SinkProcess,
    done: impl Fn(&str) -> bool,
    seconds: u64,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !done(&sink.log_text()) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "not in the sink's log after {seconds} s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// The engine's own memory limit, set low for this table's inserts: big inserts fail with
/// Code 241 and are split until they fit; nothing is dead-lettered.
async fn memory_limit(stack: &Stack) -> anyhow::Result<Done> {
    let run = Arc::new(Run::new("memory-limit", stack, 28, 0.0).await?);
    run.produce(MEMORY_LIMIT_EVENTS).await?;
    run.inject(json!({"settings": {"max_memory_usage": MEMORY_LIMIT_BYTES.to_string()}}))
        .await?;
    let sink = run.start_sink(&[("CLICKSTREAM_SINK_MAX_ROWS", "300000".to_owned())], &[])?;
    run.wait_accounted(Duration::from_secs(180)).await?;
    settle(&sink, Duration::from_secs(30)).await;
    let splits = sink.metric("clickstream_sink_insert_splits_total").await;
    let (removed, rebuilt) = repairs(&sink).await;
    run.clear_fault().await?;
    let injected = json!({
        "max_memory_usage": MEMORY_LIMIT_BYTES,
        "events": MEMORY_LIMIT_EVENTS,
        "max_rows": 300_000,
        "insert_splits": splits,
        "rows_left_by_refused_inserts_removed": removed,
        "rollup_keys_rebuilt": rebuilt,
    });
    let done = finish(run, sink, injected).await?;
    also(&done, |v| {
        anyhow::ensure!(splits > 0.0, "no insert hit the memory limit");
        none_dead_lettered(v)?;
        Ok(())
    })?;
    Ok(done)
}

/// A refused insert's rows are in the table before the refusal reaches the sink, so every
/// offset can look accounted for while the sink is still splitting: waits (up to `limit`)
/// for its writes to end before what it did is read, or it is stopped.
async fn settle(sink: &crate::run::SinkProcess, limit: Duration) -> bool {
    let settled = Instant::now();
    loop {
        let writing = sink.metric("clickstream_sink_inserts_in_flight").await > 0.0
            || sink.metric("clickstream_sink_buffered_rows").await > 0.0;
        if !writing {
            return true;
        }
        if settled.elapsed() >= limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the sink did about refused inserts: rows they left that it removed, rollup keys it
/// rebuilt.
async fn repairs(sink: &crate::run::SinkProcess) -> (f64, f64) {
    (
        sink.metric("clickstream_sink_partial_rows_removed_total")
            .await,
        sink.metric("clickstream_sink_rollup_keys_rebuilt_total")
            .await,
    )
}

/// A materialized view of the user's own refuses some valid rows (`throwIf`, Code 395) and
/// is fed after `events_1m`: each refused INSERT of the bisection left its rows in
/// `events` and in the rollups fed before the view. The refused rows are dead-lettered, every
/// other event is stored once, and every rollup equals the table again (the keys the refused
/// inserts touched rebuilt from `events`).
async fn view_refuses_rows(stack: &Stack) -> anyhow::Result<Done> {
    let run = Arc::new(Run::new("view-refuses-rows", stack, 35, 0.0).await?);
    let refused = "ifNull(price, 0) >= 300";
    clickstream_testkit::add_refusing_view(&run.client, &run.database, refused)
        .await
        .map_err(anyhow::Error::msg)?;
    run.produce(20_000).await?;
    let sink = run.start_sink(&[], &[])?;
    let streamer = stream(&run, 1_000, 20);
    streamer.await.context("streamer")??;
    run.wait_accounted(Duration::from_secs(180)).await?;
    anyhow::ensure!(
        settle(&sink, Duration::from_secs(120)).await,
        "the sink was still writing 120 s after every offset looked accounted for"
    );
    let (removed, rebuilt) = repairs(&sink).await;
    let found = sink
        .log_text()
        .matches("found the rows the view refuses")
        .count();
    anyhow::ensure!(
        found > 0,
        "the refused rows were never found with the view's SELECT (bisected with inserts)"
    );
    let injected = json!({
        "view": format!("throwIf({refused}), fed after events_1m"),
        "refused_inserts_resolved_by_the_views_select": found,
        "stream": "20,000 events pre-loaded + 1,000 events/s for 20 s",
        "rows_left_by_refused_inserts_removed": removed,
        "rollup_keys_rebuilt": rebuilt,
    });
    let done = finish(run, sink, injected).await?;
    also(&done, |v| {
        anyhow::ensure!(v.dead_lettered > 0, "the view refused no row");
        anyhow::ensure!(
            v.dead_letter_reasons
                .keys()
                .all(|r| r == "rejected_by_clickhouse"),
            "other dead-letter reasons: {:?}",
            v.dead_letter_reasons
        );
        anyhow::ensure!(rebuilt > 0.0, "no rollup key was rebuilt");
        Ok(())
    })?;
    Ok(done)
}

/// A sink killed (SIGABRT) after a refused insert's rows went in again but before the rollup
/// keys they touch were rebuilt: the views fed before the failing one count those rows twice,
/// and only ClickHouse knows which keys (`kafka_pending_rebuilds`). The restarted sink finds
/// the rows stored, rebuilds the recorded keys at its first write and deletes the record:
/// every rollup equals the table.
async fn killed_before_rebuild(stack: &Stack) -> anyhow::Result<Done> {
    let run = Arc::new(Run::new("killed-before-rebuild", stack, 36, 0.0).await?);
    let refused = "ifNull(price, 0) >= 300";
    clickstream_testkit::add_refusing_view(&run.client, &run.database, refused)
        .await
        .map_err(anyhow::Error::msg)?;
    run.produce(6_000).await?;
    let sink = run.start_sink(
        &[("CLICKSTREAM_FAILPOINT", "abort-before-rebuild:1".to_owned())],
        &[],
    )?;
    let status = sink.wait_exit(Duration::from_secs(180)).await?;
    anyhow::ensure!(
        status.signal() == Some(6),
        "the failpoint run ended with {status:?}, not SIGABRT"
    );
    let count = |sql: &'static str| {
        let client = run.client.clone();
        async move { client.query(sql).fetch_one::<u64>().await }
    };
    let owed = count("SELECT count() FROM kafka_pending_rebuilds").await?;
    anyhow::ensure!(owed > 0, "no rollup key was recorded before the abort");
    // The product's own check of the rollups against the table, as left by the kill.
    let checks =
        clickstream_sink::ops::verify::check_rollups(&run.client, &run.database, "events", None)
            .await?;
    let differing: Vec<String> = checks
        .iter()
        .filter(|c| !c.equal())
        .map(|c| {
            format!(
                "{} {}: {} for {}",
                c.rollup, c.measure, c.rollup_total, c.raw_total
            )
        })
        .collect();
    anyhow::ensure!(
        !differing.is_empty(),
        "after the abort every rollup equals the table: the kill left nothing to repair (the \
         scenario tests nothing)"
    );
    // What an operator sees meanwhile: `verify` names the keys owed and what to do.
    let verify = run.product_verify().await?;
    anyhow::ensure!(
        verify.problems.iter().any(|p| p.contains("owed a rebuild")),
        "verify after the abort does not name the rebuild owed: {:?}",
        verify.problems
    );
    run.stream(1_000, 5).await?;
    let sink = run.start_sink(&[], &[])?;
    run.wait_accounted(Duration::from_secs(180)).await?;
    anyhow::ensure!(
        settle(&sink, Duration::from_secs(120)).await,
        "the sink was still writing 120 s after every offset looked accounted for"
    );
    let left = count("SELECT count() FROM kafka_pending_rebuilds").await?;
    anyhow::ensure!(
        left == 0,
        "{left} recorded rollup keys are left after the restart"
    );
    let (_, rebuilt) = repairs(&sink).await;
    anyhow::ensure!(rebuilt > 0.0, "the restarted sink rebuilt no rollup key");
    let injected = json!({
        "view": format!("throwIf({refused}), fed after events_1m"),
        "stream": "6,000 events pre-loaded; the sink aborted before its first rollup rebuild; 1,000 events/s for 5 s; restarted",
        "rollup_keys_recorded_at_the_abort": owed,
        "rollup_checks_differing_at_the_abort": differing.len(),
        "verify_at_the_abort": verify.problems.iter().find(|p| p.contains("owed a rebuild")),
        "first_differing_check_at_the_abort": differing[0],
        "rollup_keys_rebuilt_after_the_restart": rebuilt,
    });
    finish(run, sink, injected).await
}

/// SIGTERM while the sink isolates the rows a view refuses, with a shutdown deadline (200 ms)
/// that passes before the isolation ends: the sink stops without committing what it had not
/// written, and before rebuilding the rollup keys the refused inserts touched (the last
/// session's failure: rollups doubled for good). The restarted sink rebuilds the recorded
/// keys; every event is stored or dead-lettered once and every rollup equals the table.
/// A sink that finished its rebuild within the deadline would prove nothing, and on a fast
/// machine it did (CI, three attempts in a row): so the endpoint holds each statement of a
/// rollup rebuild back for 3 s (a rebuild over a large table), and the SIGTERM lands inside
/// one. Should a sink still not be caught, another 20,000 events and another sink, up to
/// three times; keys must be owed after one of them.
async fn sigterm_mid_isolation(stack: &Stack) -> anyhow::Result<Done> {
    const ATTEMPTS: usize = 3;
    let run = Arc::new(Run::new("sigterm-mid-isolation", stack, 37, 0.0).await?);
    let refused = "ifNull(price, 0) >= 300";
    clickstream_testkit::add_refusing_view(&run.client, &run.database, refused)
        .await
        .map_err(anyhow::Error::msg)?;
    // The statements of a rebuild, and only those (`rollups::rebuild`: its dry-run SELECT, its
    // DELETE and its INSERT ... SELECT select the keys by `WHERE toString(key) IN ...`).
    let slow_rebuild = "WHERE toString(";
    const SLOW: Duration = Duration::from_secs(3);
    run.inject(json!({
        "queries": true,
        "match": slow_rebuild,
        "database": run.database,
        "delay_ms": SLOW.as_millis() as u64,
    }))
    .await?;
    let mut attempt = 0;
    let (removed_before, status, last_error, owed) = loop {
        attempt += 1;
        run.produce(20_000).await?;
        // Records an earlier attempt's sink left are not this attempt's.
        let earlier: Vec<u64> = run
            .client
            .query("SELECT DISTINCT repair_id FROM kafka_pending_rebuilds")
            .fetch_all::<u64>()
            .await?;
        let sink = run.start_sink(
            &[("CLICKSTREAM_SINK_SHUTDOWN_TIMEOUT_MS", "200".to_owned())],
            &[],
        )?;
        // A refused insert's leftovers just removed, its rebuild not done: isolating. (From
        // the second attempt on, rows the stopped sink deleted are read again and their keys
        // rebuilt too: so a rise of `removed` with no rebuild since the last sample.)
        let began = Instant::now();
        let mut previous: Option<(f64, f64)> = None;
        let caught = loop {
            // Both counters from one scrape; a scrape that fails is no sample (not zeros).
            if let Ok(metrics) = scrape(sink.http_port).await {
                let value = |name: &str| metrics.get(name).copied().unwrap_or(0.0);
                let now = (
                    value("clickstream_sink_partial_rows_removed_total"),
                    value("clickstream_sink_rollup_keys_rebuilt_total"),
                );
                if let Some((removed, rebuilt)) = previous
                    && now.0 > removed
                    && now.1 == rebuilt
                {
                    break true;
                }
                previous = Some(now);
            }
            if began.elapsed() > Duration::from_secs(120) {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (removed_before, _) = repairs(&sink).await;
        let log_path = sink.log.clone();
        sink.signal("TERM")?;
        let status = sink.wait_exit(Duration::from_secs(60)).await?;
        // The endpoint holds a statement back before running it, and runs it even when its
        // client has gone: a rebuild statement the stopped sink sent runs up to SLOW after it
        // exited. Not after the next sink's own rebuild of those keys (a late DELETE would
        // undo it): ClickHouse itself would have started it when it came.
        tokio::time::sleep(SLOW + Duration::from_secs(2)).await;
        let log = std::fs::read_to_string(log_path)?;
        let last_error: Option<String> = log
            .lines()
            .rev()
            .find(|l| l.contains("ERROR"))
            .map(|l| l.chars().take(400).collect());
        // Rollup keys this sink recorded and did not rebuild (not the markers of a progress
        // floor or of rows read again, whose names start with a parenthesis).
        let not_earlier = if earlier.is_empty() {
            String::new()
        } else {
            let ids: Vec<String> = earlier.iter().map(u64::to_string).collect();
            format!(" AND repair_id NOT IN ({})", ids.join(", "))
        };
        let owed = run
            .client
            .query(&format!(
                "SELECT count() FROM kafka_pending_rebuilds \
                 WHERE NOT startsWith(rollup, '('){not_earlier}"
            ))
            .fetch_one::<u64>()
            .await?;
        if caught && owed > 0 {
            break (removed_before, status, last_error, owed);
        }
        anyhow::ensure!(
            attempt < ATTEMPTS,
            "in {ATTEMPTS} attempts no SIGTERM during an isolation left rollup keys owed (the \
             last: {}), so the restart's repair was never exercised",
            if caught {
                "the sink rebuilt them within the 200 ms deadline"
            } else {
                "never caught the sink between removing leftovers and rebuilding in 120 s"
            }
        );
    };
    run.clear_fault_matching(slow_rebuild).await?;
    let sink = run.start_sink(&[], &[])?;
    run.wait_accounted(Duration::from_secs(240)).await?;
    anyhow::ensure!(
        settle(&sink, Duration::from_secs(120)).await,
        "the sink was still writing 120 s after every offset looked accounted for"
    );
    let left = run
        .client
        .query("SELECT count() FROM kafka_pending_rebuilds")
        .fetch_one::<u64>()
        .await?;
    anyhow::ensure!(
        left == 0,
        "{left} recorded rollup keys are left after the restart"
    );
    let injected = json!({
        "view": format!("throwIf({refused}), fed after events_1m"),
        "stream": format!("20,000 events pre-loaded before each attempt; {attempt} attempt(s)"),
        "sigterm": "once a refused insert's leftovers were removed, before any rebuild; shutdown_timeout_ms 200",
        "slow_rebuild": "each rebuild statement held back 3 s by the endpoint until the SIGTERM",
        "leftover_rows_removed_before_the_sigterm": removed_before,
        "sigtermed_sink_exit": format!("{status:?}"),
        "rollup_keys_owed_after_the_sigterm": owed,
        "sigtermed_sink_last_error": last_error,
    });
    finish(run, sink, injected).await
}

/// Low enough that an insert of 10,000 events with the rollups exceeds it, high enough for a
/// few thousand. Each materialized view adds a fixed few MB to every insert (its aggregation;
/// users_daily_mv allocates a 4.15 MiB chunk even for 2 rows), so the limit follows the views:
/// 12 MB with five; with users_daily_mv a 2-event insert used 15-16 MB alone and 18.3 MiB under
/// scripts/test's load, while 5,000 events failed at 22 MB alone. 32 MB leaves a 2-row insert
/// 75 % more than it used (a single row over the limit is retried, never split), and the first
/// inserts (about 40,000 rows a partition) still far exceed it.
const MEMORY_LIMIT_BYTES: u64 = 32_000_000;
/// Enough that each partition's first insert (about 40,000 rows) is far over the limit: with
/// 30,000 events (10,000 per partition) the inserts fitted in 24 MB under scripts/test and no
/// insert was split (the limit had to rise from 12 MB when `users_daily_mv` made every insert
/// need 15-18 MB, even of 2 rows).
const MEMORY_LIMIT_EVENTS: usize = 120_000;

/// Disk full (Code 243) for 15 s while events stream in: inserts are retried, the sink
/// reports itself stalled within stall_timeout_ms (5 s here) and recovers by itself.
async fn disk_full(stack: &Stack) -> anyhow::Result<Done> {
    let run = Arc::new(Run::new("disk-full", stack, 29, 0.0).await?);
    let sink = run.start_sink(
        &[("CLICKSTREAM_SINK_STALL_TIMEOUT_MS", "5000".to_owned())],
        &[],
    )?;
    let streamer = stream(&run, 500, 35);
    tokio::time::sleep(Duration::from_secs(8)).await;
    run.inject(json!({"error_code": 243, "error_name": "NOT_ENOUGH_SPACE", "count": -1}))
        .await?;
    let began = Instant::now();
    let mut detected_ms = None;
    while began.elapsed() < Duration::from_secs(15) {
        if detected_ms.is_none() && sink.ready_status().await == 503 {
            detected_ms = Some(began.elapsed().as_millis() as u64);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stalled = sink.metric("clickstream_sink_stalled").await;
    run.clear_fault().await?;
    let cleared = Instant::now();
    let mut recovered_ms = None;
    while cleared.elapsed() < Duration::from_secs(30) {
        if sink.ready_status().await == 200 {
            recovered_ms = Some(cleared.elapsed().as_millis() as u64);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    streamer.await.context("streamer")??;
    let logged = sink.log_text().contains("the sink is stalled");
    anyhow::ensure!(
        detected_ms.is_some() && stalled == 1.0,
        "the stall was not reported"
    );
    anyhow::ensure!(logged, "no ERROR log for the stall");
    anyhow::ensure!(recovered_ms.is_some(), "/ready did not recover");
    let injected = json!({
        "fault": "every insert fails with Code 243 NOT_ENOUGH_SPACE for 15 s",
        "stall_timeout_ms": 5_000,
        "stall_detected_after_ms": detected_ms,
        "ready_again_after_ms": recovered_ms,
        "stream": "500 events/s for 35 s",
    });
    finish(run, sink, injected).await
}

/// An error code the sink has never heard of: retried (and counted) like any transient
/// failure, then everything once.
async fn unknown_error(stack: &Stack) -> anyhow::Result<Done> {
    let run = Arc::new(Run::new("unknown-error", stack, 30, 0.0).await?);
    run.inject(json!({"error_code": 4242, "error_name": "SOMETHING_NEW", "count": 6}))
        .await?;
    run.produce(5_000).await?;
    let sink = run.start_sink(&[], &[])?;
    run.wait_accounted(Duration::from_secs(120)).await?;
    let retries = sink.metric("clickstream_sink_retries_total").await;
    run.clear_fault().await?;
    anyhow::ensure!(
        retries >= 6.0,
        "only {retries} retries for 6 injected failures"
    );
    let injected = json!({
        "fault": "6 inserts fail with Code 4242 (unknown to the sink)",
        "retries": retries,
    });
    finish(run, sink, injected).await
}

/// The same events produced twice at other offsets (a producer retry without idempotence):
/// every offset is stored once, and the repeats are counted.
async fn source_duplicates(stack: &Stack) -> anyhow::Result<Done> {
    let run = Arc::new(Run::new("source-duplicates", stack, 31, 0.0).await?);
    let times = vec![chrono::Utc::now(); 2_000];
    let events = run.events_at(&times);
    let repeats: Vec<_> = events.iter().step_by(10).cloned().collect();
    run.produce_timed(events).await?;
    run.produce_timed(repeats.clone()).await?;
    let sink = run.start_sink(&[], &[])?;
    run.wait_accounted(Duration::from_secs(120)).await?;
    let counted = sink
        .metric("clickstream_sink_duplicate_event_ids_total")
        .await;
    let unique: u64 = run
        .client
        .query("SELECT uniqExact(event_id) FROM events")
        .fetch_one()
        .await?;
    anyhow::ensure!(
        counted == repeats.len() as f64,
        "{counted} repeats counted, {} produced",
        repeats.len()
    );
    let injected = json!({
        "events": 2_000,
        "produced_again_at_new_offsets": repeats.len(),
        "duplicate_event_ids_counted": counted,
        "unique_event_ids_in_clickhouse": unique,
    });
    finish(run, sink, injected).await
}

/// Poison of every kind, SIGKILLs at random moments and a second member joining and
/// leaving: every offset once in ClickHouse or the dead-letter topic (letters written again
/// on a replay are keyed by source offset and counted as repeats).
async fn poison_kills_rebalance(stack: &Stack) -> anyhow::Result<Done> {
    let run = Arc::new(Run::new("poison-kills-rebalance", stack, 32, 0.05).await?);
    let steady = run.start_sink(&[], &[])?;
    let streamer = stream(&run, 1_000, 40);
    let began = Instant::now();
    let mut kills = 0;
    while !streamer.is_finished() && began.elapsed() < Duration::from_secs(90) {
        let other = run.start_sink(&[], &[])?;
        tokio::time::sleep(Duration::from_millis(2_000 + rand::random::<u64>() % 4_000)).await;
        other.kill();
        kills += 1;
    }
    streamer.await.context("streamer")??;
    let injected = json!({
        "poison_ratio": 0.05,
        "second_member_sigkilled": kills,
        "stream": "1,000 events/s for 40 s",
    });
    finish(run, steady, injected).await
}

/// A member frozen (SIGSTOP) past its session timeout while it may be writing, three times:
/// the group moves its partitions; when it wakes it must neither insert nor commit for them.
async fn zombie(stack: &Stack) -> anyhow::Result<Done> {
    let run = Arc::new(Run::new("zombie", stack, 33, 0.0).await?);
    let frozen = run.start_sink(&[], &[])?;
    let other = run.start_sink(&[], &[])?;
    let streamer = stream(&run, 1_000, 45);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        frozen.signal("STOP")?;
        tokio::time::sleep(Duration::from_secs(7)).await;
        frozen.signal("CONT")?;
    }
    streamer.await.context("streamer")??;
    let status = frozen.terminate(Duration::from_secs(60)).await?;
    anyhow::ensure!(status.success(), "the woken sink exited with {status:?}");
    let injected = json!({
        "freezes": "3 × SIGSTOP for 7 s (session timeout 4 s) of one of two members",
        "stream": "1,000 events/s for 45 s",
    });
    finish(run, other, injected).await
}

/// Where Debian's libfaketime puts its preload library (`apt-get install libfaketime`).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The sink's wall clock jumps 1 h forward, then 1 h back (an NTP step), while events stream
/// in: batching runs on the monotonic clock and validation on the messages' own timestamps,
/// so nothing is lost, repeated or wrongly dead-lettered.
async fn clock_jump(stack: &Stack) -> anyhow::Result<Done> {
    if !std::path::Path::new(LIBFAKETIME).exists() {
        return Ok(Done::Skipped(format!(
            "{LIBFAKETIME} is missing (apt-get install libfaketime; scripts/faults does this)"
        )));
    }
    let run = Arc::new(Run::new("clock-jump", stack, 34, 0.0).await?);
    let clock = stack.log_dir.join("clock-jump").join("faketime");
    std::fs::write(&clock, "+0\n")?;
    let sink = run.start_sink(
        &[
            ("LD_PRELOAD", LIBFAKETIME.to_owned()),
            ("FAKETIME_TIMESTAMP_FILE", clock.display().to_string()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
            ("FAKETIME_CACHE_DURATION", "1".to_owned()),
        ],
        &[],
    )?;
    let streamer = stream(&run, 1_000, 40);
    let mut jumps = Vec::new();
    for (after_s, offset) in [(10, "+1h"), (10, "-1h"), (10, "+0")] {
        tokio::time::sleep(Duration::from_secs(after_s)).await;
        std::fs::write(&clock, format!("{offset}\n"))?;
        jumps.push(offset);
    }
    streamer.await.context("streamer")??;
    run.wait_accounted(Duration::from_secs(120)).await?;
    let injected = json!({
        "wall_clock": jumps,
        "every_s": 10,
        "stream": "1,000 events/s for 40 s",
    });
    let done = finish(run, sink, injected).await?;
    also(&done, none_dead_lettered)?;
    Ok(done)
}
