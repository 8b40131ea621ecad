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
        // Fresh events on every partition, so the n-th insert happens.
        run.produce(4_000).await?;
        let sink = run.start_sink(
            &[("CLICKSTREAM_FAILPOINT", format!("abort-after-insert:{n}"))],
            args,
        )?;
        let status = sink.wait_exit(Duration::from_secs(120)).await?;
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
        "stream": "24,000 events pre-loaded in 6 stages + 2,000 events/s for 50 s",
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
